#!/bin/bash
# Kernel costs behind the runtime's design choices, measured side by side (as root):
# - a fault by who serves it: a handler thread (poll or read), the faulting thread itself
#   (userfaultfd's SIGBUS mode), the kernel's own anonymous fault, a futex round trip;
# - userfaultfd round trip by CPU placement (why `dsmrun --cpus` keeps the program and
#   its handler on one CPU, and why the reclaimer stays there too);
# - dropping scattered pages with a madvise each against one process_madvise per batch
#   (what cache/unmap.rs does);
# - installing pages with UFFDIO_COPY one by one or in runs, with the drops a scan through
#   the cache needs (what fault/map_ahead.rs does);
# - recycling evicted pages with UFFDIO_MOVE (out to a staging buffer, refilled, moved
#   back in and write-protected) against UFFDIO_COPY + MADV_DONTNEED, alone on CPU A and
#   with a thread of the same process spinning on CPU B (TLB shootdowns);
# - installing a streaming region 2 MiB at a time: a PMD-mapped transparent huge page
#   moved in with UFFDIO_MOVE (fresh, or recycled from the region evicted), by a loop or
#   by a handler on the first fault in the region, against the 4 KiB runs above and
#   against reading the same bytes from tmpfs (its edge cases first: when the PMD stays
#   huge, what splits it).
# Usage: benches/kernel_costs.sh [CPU_A CPU_B [thp]]   (default 0 1; "thp": that last
# part alone). Needs gcc.
set -euo pipefail
A=${1:-0}; B=${2:-1}; ONLY=${3:-}
DIR=$(mktemp -d); trap 'rm -rf "$DIR" /dev/shm/kernel_costs.$$' EXIT
HERE=$(cd "$(dirname "$0")" && pwd)

thp() {
  gcc -O2 -pthread -o "$DIR/uffd_move_thp" "$HERE/kernel/uffd_move_thp.c"
  echo "== 2 MiB installs: UFFDIO_MOVE of huge pages against 4 KiB runs, on CPU $A"
  taskset -c "$A" "$DIR/uffd_move_thp" edges
  for mode in copy64 move4k thp thprecycle thpfault thpfaultrc thpfaultnh; do
    taskset -c "$A" "$DIR/uffd_move_thp" "$mode"
  done
  for mode in copy64 move4k thp thprecycle thpfault thpfaultrc thpfaultnh; do
    taskset -c "$A" "$DIR/uffd_move_thp" "$mode" spin "$B"
  done
  taskset -c "$A" "$DIR/uffd_move_thp" pread
  local f=/dev/shm/kernel_costs.$$
  dd if=/dev/zero of="$f" bs=1M count=512 status=none
  taskset -c "$A" dd if="$f" of=/dev/null bs=4k 2>&1 |
    awk '/copied/ { printf "dd tmpfs 4 KiB: %.2f us/page (%s s)\n", $(NF-3) * 1e6 / 131072, $(NF-3) }'
  rm -f "$f"
}
if [ "$ONLY" = thp ]; then thp; exit 0; fi
gcc -O2 -pthread -o "$DIR/uffd_placement" "$HERE/kernel/uffd_placement.c"
gcc -O2 -o "$DIR/unmap_batch" "$HERE/kernel/unmap_batch.c"
gcc -O2 -pthread -o "$DIR/uffd_modes" "$HERE/kernel/uffd_modes.c"
gcc -O2 -o "$DIR/uffd_copy_runs" "$HERE/kernel/uffd_copy_runs.c"
gcc -O2 -pthread -o "$DIR/uffd_move_runs" "$HERE/kernel/uffd_move_runs.c"
echo "== a fault by who serves it, on CPU $A (20000 faults each)"
for mode in poll read sigbus kernel; do taskset -c "$A" "$DIR/uffd_modes" "$mode"; done
echo "== userfaultfd round trip (20000 faults each)"
for cfg in "$A $A 0 0" "$B $A 0 0" "$B $A 1 0" "$B $A 1 1" "$B $A 0 1" "$A $A 0 0"; do
  # shellcheck disable=SC2086
  "$DIR/uffd_placement" $cfg
done
echo "== dropping 65536 scattered pages, on CPU $A"
taskset -c "$A" "$DIR/unmap_batch"
echo "== mapping pages ahead: UFFDIO_COPY and MADV_DONTNEED in runs, on CPU $A"
for run in 1 16 64; do taskset -c "$A" "$DIR/uffd_copy_runs" "$run"; done
echo "== recycling pages with UFFDIO_MOVE against UFFDIO_COPY + MADV_DONTNEED, on CPU $A"
for run in 16 64; do
  for mode in copy move moveck; do taskset -c "$A" "$DIR/uffd_move_runs" "$mode" "$run"; done
done
for mode in copy move moveck; do
  taskset -c "$A" "$DIR/uffd_move_runs" "$mode" 64 spin "$B"
done
thp
