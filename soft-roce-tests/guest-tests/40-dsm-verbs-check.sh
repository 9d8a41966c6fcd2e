# The project's verbs transport on Soft-RoCE: two memory nodes (`dsmrun node`, ids 0
# and 1) in guest A, and in guest B `dsm-transport-check --transport verbs`: batched
# RDMA READ/WRITE spanning both nodes (one doorbell per node chain, only the last WR
# signalled, chunks past the send-queue depth), multi-page and unaligned operations, bounds rejections, compare-and-swap
# semantics and contention (rxe's atomics), every page re-read over TCP; then the
# node is killed under an open session: the next READ must fail naming the node
# within the timeout, never hang.
# sr-timeout: 180
. "$SR_LIB"
dsm_bin dsmrun dsm-transport-check
PORT=18700
if [ "$SR_ROLE" = a ]; then
  dsm_node_start $PORT 32M 2
  # the client opens a session, then asks for the node to die
  end=$(( $(cut -d. -f1 /proc/uptime) + 150 ))
  while [ ! -e "$SR_OUT/death.armed" ] && [ ! -e "$SR_SHARE/sync/$SR_TEST.done.b" ]; do
    [ "$(cut -d. -f1 /proc/uptime)" -ge "$end" ] && break
    sleep 0.2
  done
  [ -e "$SR_OUT/death.armed" ] && { kill -9 "$DSM_NODE_PID"; sr_log "node killed"; : >"$SR_OUT/death.killed"; }
  sr_barrier done 100 || sr_log "client did not reach 'done'"
  dsm_node_stop
  for i in 0 1; do
    grep -q 'region of .* registered' "$SR_OUT/node.$i.err" || sr_fail "node $i never registered its region"
  done
  exit 0
fi
dsm_client_ready
"$SR_BIN/release/dsm-transport-check" --nodes "$SR_PEER_IP:$PORT,$SR_PEER_IP:$((PORT + 1))" --transport verbs \
  --timeout-ms 10000 --node-death "$SR_OUT/death" >"$SR_OUT/check.txt" 2>&1
rc=$?
sr_barrier done 10
cat "$SR_OUT/check.txt"
[ $rc = 0 ] || sr_fail "dsm-transport-check over verbs failed (rc $rc)"
grep -q '^transport verbs.*, 2 node(s)' "$SR_OUT/check.txt" || sr_fail "the check did not run over verbs with 2 nodes"
sr_summary "$(grep '^transport-check:' "$SR_OUT/check.txt")"
sr_summary "  $(grep 'compare-and-swap' "$SR_OUT/check.txt" | sed 's/^ok *//' | tr '\n' ';' | sed 's/;$//')"
sr_summary "  $(grep '^node death: first' "$SR_OUT/check.txt")"
exit 0
