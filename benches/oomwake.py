#!/usr/bin/env python3
# The OOM watchdog of a kernel-swap group (oom_kill_disable=1): woken through the v1
# OOM notifier (an eventfd on memory.oom_control) and by a 5 ms poll of under_oom (in a
# test with a truly full group the notifier did not fire for every OOM, so the poll is
# what bounds the latency). A wake: one page less makes the kernel reclaim in the group, the limit
# restored wakes the waiter, whose fault is retried. Writes the count to argv[3].
# Usage: oomwake.py CGROUP_DIR LIMIT_BYTES COUNT_FILE (cgroup v1 memory controller).
import os, select, sys
cg, lim, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
efd = os.eventfd(0, os.EFD_NONBLOCK)
ofd = os.open(cg + "/memory.oom_control", os.O_RDONLY)
with open(cg + "/cgroup.event_control", "w") as f:
    f.write(f"{efd} {ofd}")
wakes = 0
while True:
    select.select([efd], [], [], 0.005)
    try:
        os.eventfd_read(efd)
    except BlockingIOError:
        pass
    with open(cg + "/memory.oom_control") as f:
        if "under_oom 1" not in f.read():
            continue
    for v in (lim - 4096, lim):
        try:
            with open(cg + "/memory.limit_in_bytes", "w") as f:
                f.write(str(v))
        except OSError:
            pass
    wakes += 1
    with open(out, "w") as f:
        f.write(str(wakes))
