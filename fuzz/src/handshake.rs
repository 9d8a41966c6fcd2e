//! `handshake`: both sides of the authentication (transport/auth.rs) against a peer that
//! sends the input: a node facing an unauthenticated client, and a client facing a
//! fake node. Neither may panic, and neither may accept: the peer cannot know the MAC
//! over a fresh random nonce.
//!
//! Input: the first byte picks the side, the rest is what the peer sends.

use dsm_runtime::transport::auth::{self, NodeHello, Secret};
use std::io::{self, Read, Write};

/// A peer whose bytes are the input and who swallows what it is sent.
struct Peer<'a> {
    input: &'a [u8],
    sent: usize,
}

impl Read for Peer<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.input.read(buf)
    }
}

impl Write for Peer<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.sent += buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

pub fn run(data: &[u8]) {
    let Some((side, input)) = data.split_first() else {
        return;
    };
    let secret = Secret::new("fuzz").unwrap();
    let mut peer = Peer { input, sent: 0 };
    if side & 1 == 0 {
        let hello = NodeHello {
            node_id: 1,
            region_bytes: 4096,
        };
        assert!(
            auth::accept(&mut peer, &secret, hello).is_err(),
            "node accepted"
        );
        // The hello, and at most a refusal: nothing more to a peer that failed.
        assert!(
            peer.sent <= auth::HELLO_BYTES + 33,
            "{} bytes sent",
            peer.sent
        );
    } else {
        assert!(
            auth::connect(&mut peer, &secret).is_err(),
            "client accepted"
        );
    }
}
