//! `control`: control calls (their classification and the node's answer to unknown ones)
//! and the shared-memory backend's `Offer::decode`, which parses a node's answer.
//!
//! Input: the message of a call, also taken as an answer to `shm-attach`.

use dsm_runtime::node::request::{self, Call};
use dsm_runtime::transport::shm::{Offer, ATTACH_CALL};
use dsm_runtime::transport::wire::MAX_CALL_BYTES;

pub fn run(data: &[u8]) {
    call(data);
    // The longest call a node takes, made of the input repeated: what an answer quoting
    // the call grows to, without waiting for libFuzzer to grow inputs to 64 KiB.
    if !data.is_empty() && data.len() < MAX_CALL_BYTES as usize {
        let max = MAX_CALL_BYTES as usize;
        let mut long = data.repeat(max.div_ceil(data.len()));
        long.truncate(max);
        call(&long);
    }
    offer(data);
}

fn call(msg: &[u8]) {
    match request::parse_call(msg) {
        Call::Ping => assert_eq!(msg, b"ping"),
        Call::Stats => assert_eq!(msg, b"stats"),
        Call::ShmAttach => assert_eq!(msg, ATTACH_CALL.as_bytes()),
        Call::VerbsConnect(m) => assert!(m == msg && m.starts_with(b"verbs-connect")),
        Call::Snapshot { path, .. } => {
            assert!(msg.starts_with(request::SNAPSHOT_CALL) && !path.contains(".."))
        }
        Call::Unknown(m) => {
            assert_eq!(m, msg);
            // A client reads at most MAX_CALL_BYTES of a rejection.
            let answer = request::unknown_call_message(m);
            assert!(
                answer.len() <= MAX_CALL_BYTES as usize,
                "{} bytes",
                answer.len()
            );
        }
    }
}

fn offer(answer: &[u8]) {
    let Ok(o) = Offer::decode(answer) else { return };
    assert_eq!(Offer::decode(&o.encode()), Ok(o), "offer round trip");
}
