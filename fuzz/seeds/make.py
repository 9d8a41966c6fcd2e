#!/usr/bin/env python3
"""Writes the seed corpus: a few valid and nearly valid frames per target.

The fuzzers start from these (and from the dictionary, wire.dict) rather than from
nothing; `cargo test` in fuzz/ replays them through every target. Run from fuzz/seeds/.
"""
import os
import struct

MAGIC = 0x314D5344
READ, WRITE, CAS, CALL = 1, 2, 3, 4


def frame(op, entries=(), payload=b"", seq=1):
    out = struct.pack("<IBBHIIQ", MAGIC, op, 0, 0, len(entries), len(payload), seq)
    for off, ln in entries:
        out += struct.pack("<QII", off, ln, 0)
    return out + payload


def cas(off, exp, new):
    return frame(CAS, payload=struct.pack("<QQQ", off, exp, new))


def write(off, data):
    return frame(WRITE, [(off, len(data))], data)


STREAMS = {
    "read": frame(READ, [(0, 4096), (8192, 16)]),
    "read-oob": frame(READ, [(2**64 - 8, 16)]) + frame(READ, [(4096, 8)], seq=2),
    "write-read": write(100, b"hello") + frame(READ, [(96, 16)], seq=2),
    "write-oob": frame(WRITE, [(16384, 4)], b"abcd") + frame(CALL, payload=b"ping"),
    "cas": cas(8, 0, 7) + cas(8, 7, 9, ) + cas(12, 0, 1) + cas(16384, 0, 1),
    "calls": frame(CALL, payload=b"ping") + frame(CALL, payload=b"stats")
    + frame(CALL, payload=b"shm-attach") + frame(CALL, payload=b"nope" * 20),
    "truncated-write": write(0, b"x" * 64)[:60],
    "bad-magic": b"XSM1" + frame(READ)[4:],
}
# Requests large enough to take the node's other paths: more than its 64 KiB input
# buffer at once, the most entries, a payload skipped across refills.
BIG = {
    "big-write": write(0, bytes(range(256)) * 64) + frame(READ, [(0, 16384)], seq=2),
    "many-entries": frame(READ, [(i * 4, 4) for i in range(4096)]),
    "big-call": frame(CALL, payload=b"x" * 65536) + frame(CALL, payload=b"ping", seq=2),
    "big-oob-write": frame(WRITE, [(i * 16384, 16384) for i in range(5)], b"y" * 81920)
    + frame(CALL, payload=b"ping", seq=2),
}

CONTROL = {
    "ping": b"ping",
    "stats": b"stats",
    "attach": b"shm-attach",
    "verbs": b'verbs-connect {"node":0}',
    "offer": b'{"boot_id":"x","pid":1,"fd":3,"dev":1,"ino":2,"bytes":4096}',
    "binary": bytes(range(256)),
}


def put(target, name, data):
    os.makedirs(target, exist_ok=True)
    with open(os.path.join(target, name), "wb") as f:
        f.write(data)


for name, s in STREAMS.items():
    put("wire", name, s)
    put("node", name, s)
    for pick in (0, 1, 2 + (1 << 20 << 2), 3):
        put("request", f"{name}-{pick & 3}", struct.pack("<Q", pick) + s)
for name, s in BIG.items():
    put("node", name, s)
    put("request", name, struct.pack("<Q", 0) + s)
for name, m in CONTROL.items():
    put("control", name, m)

# A node's hello (for the client side, first byte 1) and a client's auth message (for
# the node side, first byte 0), with made-up nonces and MACs.
HELLO = b"DSMH" + struct.pack("<HHQ", 1, 0, 1 << 30) + bytes(32)
AUTH = b"DSMA" + struct.pack("<HH", 1, 0) + bytes(32) + bytes(range(32))
put("handshake", "client-auth", b"\x00" + AUTH)
put("handshake", "node-hello", b"\x01" + HELLO + b"\x00" + bytes(32))
put("handshake", "wrong-version", b"\x00" + AUTH[:4] + b"\x02" + AUTH[5:])

# The client target: an operation (0 read, 1 write, 2 compare-and-swap, 3 call), then
# a fake node's replies to it (the client's first request has sequence number 1).
def reply(op, status, payload, seq=1, length=None):
    n = len(payload) if length is None else length
    return struct.pack("<IBBHIIQ", MAGIC, op | 0x80, status, 0, 0, n, seq) + payload


CLIENT = {
    "read-ok": b"\x00" + reply(READ, 0, bytes(range(256)) * 16 + bytes(100)),
    "read-rejected": b"\x00" + reply(READ, 1, b"outside the region"),
    "read-short": b"\x00" + reply(READ, 0, b"", length=4196)[:10],
    "read-wrong-length": b"\x00" + reply(READ, 0, bytes(50)),
    "write-ok": b"\x01" + reply(WRITE, 0, b""),
    "cas-ok": b"\x02" + reply(CAS, 0, bytes(8)),
    "call-ok": b"\x03" + reply(CALL, 0, b"pong"),
    "call-huge-rejection": b"\x03" + reply(CALL, 1, b"x" * 100, length=100000),
    "wrong-seq": b"\x03" + reply(CALL, 0, b"pong", seq=7),
}
for name, data in CLIENT.items():
    put("client", name, data)

# Found by the node target: replies to valid requests, then a malformed frame with more
# bytes unread; the node's abortive close may discard queued replies (docs/fuzzing.md).
put("node", "reply-then-garbage", frame(READ, [(i * 4, 4) for i in range(2359)]) + bytes(27792))
