"""Reading a `dsmrun --record-trace` file (format: dsm-runtime/src/trace/mod.rs), for the
Python scripts under benches/."""


def varint(b, i):
    """The LEB128 number at b[i:], and the index after it."""
    v = s = 0
    while True:
        x = b[i]
        i += 1
        v |= (x & 0x7F) << s
        s += 7
        if x < 0x80:
            return v, i


def events(path):
    """Yields (time_ns, page_index, kind) for each event; stops at a record cut short."""
    b = open(path, "rb").read()
    assert b[:8] == b"DSMTRACE", path
    i = 8 + 2 + 4 + 8
    i += 2 + int.from_bytes(b[i:i + 2], "little")
    t = p = 0
    while i < len(b):
        try:
            v, j = varint(b, i)
            d, j = varint(b, j)
        except IndexError:
            return
        i = j
        t += v >> 3
        p += (d >> 1) ^ -(d & 1)
        yield t, p, v & 7
