# The project's verbs transport on Soft-RoCE: a memory node (`dsmrun node`) in guest
# A, and in guest B `dsm-transport-check --transport verbs`: batched RDMA READ/WRITE
# (one doorbell per node chain, only the last WR signalled, chunks past the send-queue
# depth), multi-page and unaligned operations, bounds rejections, compare-and-swap
# semantics and contention (rxe's atomics), and every page re-read over TCP.
# sr-timeout: 150
. "$SR_LIB"
dsm_bin dsmrun dsm-transport-check
PORT=18700
if [ "$SR_ROLE" = a ]; then
  dsm_node_serve $PORT 64M 140
  grep -q 'region of .* registered' "$SR_OUT/node.err" || sr_fail "node never registered its region"
  exit 0
fi
dsm_client_ready
"$SR_BIN/release/dsm-transport-check" --nodes "$SR_PEER_IP:$PORT" --transport verbs \
  >"$SR_OUT/check.txt" 2>&1
rc=$?
sr_barrier done 10
cat "$SR_OUT/check.txt"
[ $rc = 0 ] || sr_fail "dsm-transport-check over verbs failed (rc $rc)"
grep -q '^transport verbs' "$SR_OUT/check.txt" || sr_fail "the check did not run over verbs"
sr_summary "$(grep '^transport-check:' "$SR_OUT/check.txt")"
sr_summary "  $(grep 'compare-and-swap' "$SR_OUT/check.txt" | sed 's/^ok *//' | tr '\n' ';' | sed 's/;$//')"
exit 0
