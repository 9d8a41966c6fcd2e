//! Fuzz target bodies, one module per target; `fuzz_targets/*.rs` are one-line wrappers
//! for libFuzzer, and the tests below replay the seed corpus without it.
//!
//! Every body panics (which libFuzzer reports as a crash) when a property breaks; the
//! properties are listed in docs/fuzzing.md.

pub mod client;
pub mod control;
pub mod handshake;
pub mod model;
pub mod node;
pub mod request;
pub mod wire;

/// Reads a little-endian u64 from up to 8 bytes at the front of `data` (zero-padded) and
/// returns it with the rest: how targets take a parameter from their input.
pub fn take_u64(data: &[u8]) -> (u64, &[u8]) {
    let n = data.len().min(8);
    let mut b = [0u8; 8];
    b[..n].copy_from_slice(&data[..n]);
    (u64::from_le_bytes(b), &data[n..])
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    fn replay(target: &str, body: fn(&[u8])) {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("seeds")
            .join(target);
        let mut n = 0;
        for f in std::fs::read_dir(&dir).expect("seed directory") {
            body(&std::fs::read(f.unwrap().path()).unwrap());
            n += 1;
        }
        assert!(n > 0, "no seeds in {}", dir.display());
    }

    #[test]
    fn seeds_pass_every_target() {
        replay("wire", crate::wire::run);
        replay("request", crate::request::run);
        replay("control", crate::control::run);
        replay("handshake", crate::handshake::run);
        replay("client", crate::client::run);
        replay("node", crate::node::run);
    }
}
