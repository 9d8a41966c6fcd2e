//! Mutual challenge-response authentication with the per-job secret.
//!
//! The secret never crosses the wire: each side proves it knows the secret by a
//! HMAC-SHA256 over both sides' fresh nonces, so a recorded handshake cannot be replayed.
//!
//! ```text
//! node   -> client: "DSMH" version node_id region_bytes server_nonce[32]
//! client -> node  : "DSMA" version client_nonce[32] HMAC(secret, "client"|sn|cn)
//! node   -> client: status HMAC(secret, "server"|cn|sn)          (status 0 = accepted)
//! ```

use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::io::{self, Read, Write};

/// Protocol version carried in the handshake; bumped on any wire change.
pub const PROTOCOL_VERSION: u16 = 1;
const HELLO_MAGIC: &[u8; 4] = b"DSMH";
const AUTH_MAGIC: &[u8; 4] = b"DSMA";
const NONCE_BYTES: usize = 32;
const MAC_BYTES: usize = 32;
/// Size of the node's hello.
pub const HELLO_BYTES: usize = 4 + 2 + 2 + 8 + NONCE_BYTES;
const CLIENT_AUTH_BYTES: usize = 4 + 2 + 2 + NONCE_BYTES + MAC_BYTES;
const SERVER_AUTH_BYTES: usize = 1 + MAC_BYTES;

/// The per-job secret shared by the launcher, the nodes and the program.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl Secret {
    /// Wraps secret bytes; an empty secret is refused.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Option<Secret> {
        let bytes = bytes.into();
        (!bytes.is_empty()).then_some(Secret(bytes))
    }

    /// A fresh random secret, hex-encoded so it can travel in an environment variable.
    pub fn generate() -> io::Result<Secret> {
        let mut raw = [0u8; 32];
        getrandom::getrandom(&mut raw).map_err(io::Error::other)?;
        Ok(Secret(hex(&raw).into_bytes()))
    }

    /// The secret as text (for passing to child processes through the environment).
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or("")
    }

    fn mac(&self, label: &[u8], a: &[u8], b: &[u8]) -> [u8; MAC_BYTES] {
        let mut m = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        m.update(label);
        m.update(a);
        m.update(b);
        m.finalize().into_bytes().into()
    }

    fn verify(&self, label: &[u8], a: &[u8], b: &[u8], tag: &[u8]) -> bool {
        let mut m = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        m.update(label);
        m.update(a);
        m.update(b);
        m.verify_slice(tag).is_ok()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn nonce() -> io::Result<[u8; NONCE_BYTES]> {
    let mut n = [0u8; NONCE_BYTES];
    getrandom::getrandom(&mut n).map_err(io::Error::other)?;
    Ok(n)
}

/// What the node announces about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeHello {
    /// The node's index, as the launcher assigned it.
    pub node_id: u16,
    /// Size of its region in bytes.
    pub region_bytes: u64,
}

/// Why a handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The stream broke or timed out.
    #[error("handshake I/O: {0}")]
    Io(#[from] io::Error),
    /// The peer does not speak this protocol or version.
    #[error("peer is not a DSM {0} (bad magic or version)")]
    NotOurProtocol(&'static str),
    /// The peer does not know the job secret.
    #[error("peer does not know the job secret")]
    BadSecret,
}

/// Node side: challenges the client; `Ok` only if it proved the secret.
pub fn accept<S: Read + Write>(
    stream: &mut S,
    secret: &Secret,
    hello: NodeHello,
) -> Result<(), AuthError> {
    let sn = nonce()?;
    let mut out = [0u8; HELLO_BYTES];
    out[0..4].copy_from_slice(HELLO_MAGIC);
    out[4..6].copy_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    out[6..8].copy_from_slice(&hello.node_id.to_le_bytes());
    out[8..16].copy_from_slice(&hello.region_bytes.to_le_bytes());
    out[16..].copy_from_slice(&sn);
    stream.write_all(&out)?;

    let mut msg = [0u8; CLIENT_AUTH_BYTES];
    stream.read_exact(&mut msg)?;
    if &msg[0..4] != AUTH_MAGIC || msg[4..6] != PROTOCOL_VERSION.to_le_bytes() {
        return Err(AuthError::NotOurProtocol("client"));
    }
    let cn = &msg[8..8 + NONCE_BYTES];
    let tag = &msg[8 + NONCE_BYTES..];
    if !secret.verify(b"client", &sn, cn, tag) {
        // Tell the peer, so an honest misconfigured client reports the cause.
        let mut refuse = [0u8; SERVER_AUTH_BYTES];
        refuse[0] = 1;
        let _ = stream.write_all(&refuse);
        return Err(AuthError::BadSecret);
    }
    let mut reply = [0u8; SERVER_AUTH_BYTES];
    reply[1..].copy_from_slice(&secret.mac(b"server", cn, &sn));
    stream.write_all(&reply)?;
    Ok(())
}

/// Client side: proves the secret and checks that the node knows it too.
pub fn connect<S: Read + Write>(stream: &mut S, secret: &Secret) -> Result<NodeHello, AuthError> {
    let mut hello = [0u8; HELLO_BYTES];
    stream.read_exact(&mut hello)?;
    if &hello[0..4] != HELLO_MAGIC || hello[4..6] != PROTOCOL_VERSION.to_le_bytes() {
        return Err(AuthError::NotOurProtocol("node"));
    }
    let node = NodeHello {
        node_id: u16::from_le_bytes([hello[6], hello[7]]),
        region_bytes: u64::from_le_bytes(hello[8..16].try_into().expect("8 bytes")),
    };
    let sn = &hello[16..];
    let cn = nonce()?;
    let mut msg = [0u8; CLIENT_AUTH_BYTES];
    msg[0..4].copy_from_slice(AUTH_MAGIC);
    msg[4..6].copy_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    msg[8..8 + NONCE_BYTES].copy_from_slice(&cn);
    msg[8 + NONCE_BYTES..].copy_from_slice(&secret.mac(b"client", sn, &cn));
    stream.write_all(&msg)?;

    let mut reply = [0u8; SERVER_AUTH_BYTES];
    stream.read_exact(&mut reply)?;
    if reply[0] != 0 || !secret.verify(b"server", &cn, sn, &reply[1..]) {
        return Err(AuthError::BadSecret);
    }
    Ok(node)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    fn handshake(node_secret: &str, client_secret: &str) -> (bool, bool) {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        let ns = Secret::new(node_secret).unwrap();
        let hello = NodeHello {
            node_id: 3,
            region_bytes: 1 << 30,
        };
        let t = std::thread::spawn(move || accept(&mut a, &ns, hello).is_ok());
        let cs = Secret::new(client_secret).unwrap();
        let client = connect(&mut b, &cs);
        if let Ok(h) = &client {
            assert_eq!(*h, hello);
        }
        (t.join().unwrap(), client.is_ok())
    }

    #[test]
    fn same_secret_is_accepted_both_ways() {
        assert_eq!(handshake("s3cret", "s3cret"), (true, true));
    }

    #[test]
    fn wrong_secret_is_refused_both_ways() {
        assert_eq!(handshake("s3cret", "guess"), (false, false));
    }

    #[test]
    fn secrets_are_not_printed() {
        let s = Secret::new("hunter2").unwrap();
        assert!(!format!("{s:?}").contains("hunter2"));
    }
}
