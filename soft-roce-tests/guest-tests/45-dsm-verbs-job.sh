# End to end over verbs, node in guest A, program in guest B:
#  1. dsm-pool-job --transport auto (must pick verbs: rxe0 is active): the runtime with
#     a cache 16x smaller than its range, so pages are fetched by RDMA READ and evicted
#     pages written back by RDMA WRITE; every touched word checked.
#  2. heapwalk, an unmodified multithreaded C program (malloc, calloc, posix_memalign,
#     mmap, realloc), run natively, then with libdsm_preload.so and the job's DSM_*
#     variables pointing at the node in guest A over verbs (what dsmrun sets for its
#     child), then under `dsmrun -n 2 --transport verbs` with its own nodes in guest B
#     (rxe loopback), then under `dsmrun --attach` to the node in guest A, as a user
#     would run a job on another machine's memory (DSM_SECRET: the secret the node was
#     started with, which dsm_client_ready exports). All four outputs must be identical.
# sr-timeout: 480
. "$SR_LIB"
dsm_bin dsmrun dsm-pool-job libdsm_preload.so
PORT=18701
if [ "$SR_ROLE" = a ]; then
  dsm_node_serve $PORT 96M 470
  exit 0
fi
dsm_client_ready
finish() { sr_barrier done 10; [ -z "$1" ] || sr_fail "$1"; }

"$SR_BIN/release/dsm-pool-job" --nodes "$SR_PEER_IP:$PORT" --transport auto \
  --space 4M --cache 256K --passes 2 >"$SR_OUT/job.txt" 2>&1
rc=$?
cat "$SR_OUT/job.txt"
grep -q 'transport: auto: verbs over rxe0' "$SR_OUT/job.txt" || finish "--transport auto did not choose verbs"
[ $rc = 0 ] || finish "dsm-pool-job over verbs failed (rc $rc)"
sr_summary "$(grep '^pool-job:' "$SR_OUT/job.txt")"

HW=$SR_SHARE/bin/heapwalk
[ -x "$HW" ] || finish "heapwalk was not built (soft-roce-tests/run builds it with cc)"
ARGS="8 2 2 7"
"$HW" $ARGS >"$SR_OUT/heapwalk.native.txt" 2>&1 || finish "heapwalk failed natively"

# The unmodified program on pooled memory, its node in the other guest, over verbs.
env DSM_NODES="$SR_PEER_IP:$PORT" DSM_TRANSPORT=verbs DSM_SLOT_BYTES=64M DSM_SLOTS=1 \
  DSM_CACHE_BYTES=2M DSM_VERBOSE=1 LD_PRELOAD="$SR_BIN/release/libdsm_preload.so" \
  "$HW" $ARGS >"$SR_OUT/heapwalk.remote.txt" 2>"$SR_OUT/heapwalk.remote.err"
rc=$?
cat "$SR_OUT/heapwalk.remote.err"
[ $rc = 0 ] || finish "heapwalk on pooled memory over verbs failed (rc $rc)"
grep -q 'transport verbs over rxe0' "$SR_OUT/heapwalk.remote.err" || finish "heapwalk's runtime did not say it uses verbs"
cmp -s "$SR_OUT/heapwalk.native.txt" "$SR_OUT/heapwalk.remote.txt" \
  || finish "heapwalk's output differs on pooled memory over verbs"
sr_summary "unmodified heapwalk $ARGS (LD_PRELOAD + DSM_* env) against the node in guest A over verbs: output identical to the native run"

# dsmrun itself, with its own nodes in this guest (rxe loopback).
"$SR_BIN/release/dsmrun" -n 2 --transport verbs --node-memory 48M --local-cache 2M \
  --max-procs 1 -v -- "$HW" $ARGS >"$SR_OUT/heapwalk.dsmrun.txt" 2>"$SR_OUT/heapwalk.dsmrun.err"
rc=$?
cat "$SR_OUT/heapwalk.dsmrun.err"
[ $rc = 0 ] || finish "dsmrun --transport verbs -- heapwalk failed (rc $rc)"
cmp -s "$SR_OUT/heapwalk.native.txt" "$SR_OUT/heapwalk.dsmrun.txt" \
  || finish "heapwalk's output differs under dsmrun --transport verbs"
sr_summary "dsmrun -n 2 --transport verbs -- heapwalk $ARGS (nodes in this guest, rxe loopback): output identical to the native run"

# dsmrun on the node in guest A. One node of 96M holds one 64 MiB slot (slots are
# multiples of 64 MiB), hence --max-procs 1; the slot the LD_PRELOAD run above held is
# free again, its process gone.
[ -n "$DSM_SECRET" ] || finish "DSM_SECRET is not set (dsm_client_ready exports it)"
"$SR_BIN/release/dsmrun" --attach "$SR_PEER_IP:$PORT" --transport verbs --local-cache 2M \
  --max-procs 1 -v -- "$HW" $ARGS >"$SR_OUT/heapwalk.attach.txt" 2>"$SR_OUT/heapwalk.attach.err"
rc=$?
cat "$SR_OUT/heapwalk.attach.err"
[ $rc = 0 ] || finish "dsmrun --attach $SR_PEER_IP:$PORT --transport verbs -- heapwalk failed (rc $rc)"
grep -q 'transport verbs over rxe0' "$SR_OUT/heapwalk.attach.err" \
  || finish "heapwalk's runtime under dsmrun --attach did not say it uses verbs"
cmp -s "$SR_OUT/heapwalk.native.txt" "$SR_OUT/heapwalk.attach.txt" \
  || finish "heapwalk's output differs under dsmrun --attach (node in guest A)"
sr_summary "dsmrun --attach $SR_PEER_IP:$PORT --transport verbs -- heapwalk $ARGS (the node in guest A): output identical to the native run"
finish
exit 0
