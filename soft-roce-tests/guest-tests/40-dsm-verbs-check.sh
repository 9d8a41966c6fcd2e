# The project's verbs transport on Soft-RoCE: a memory node (`dsmrun node`) in guest
# A, and in guest B `dsm-transport-check --transport verbs`: batched RDMA READ/WRITE
# (one doorbell per node chain, only the last WR signalled, chunks past the send-queue
# depth), multi-page and unaligned operations, bounds rejections, compare-and-swap
# semantics and contention (rxe's atomics), every page re-read over TCP; then the
# node is killed under an open session: the next READ must fail naming the node
# within the timeout, never hang.
# sr-timeout: 180
. "$SR_LIB"
dsm_bin dsmrun dsm-transport-check
PORT=18700
if [ "$SR_ROLE" = a ]; then
  dsm_node_start $PORT 64M
  # the client opens a session, then asks for the node to die
  end=$(( $(cut -d. -f1 /proc/uptime) + 150 ))
  while [ ! -e "$SR_OUT/death.armed" ] && [ ! -e "$SR_SHARE/sync/$SR_TEST.done.b" ]; do
    [ "$(cut -d. -f1 /proc/uptime)" -ge "$end" ] && break
    sleep 0.2
  done
  [ -e "$SR_OUT/death.armed" ] && { kill -9 "$DSM_NODE_PID"; sr_log "node killed"; : >"$SR_OUT/death.killed"; }
  sr_barrier done 100 || sr_log "client did not reach 'done'"
  dsm_node_stop
  grep -q 'region of .* registered' "$SR_OUT/node.err" || sr_fail "node never registered its region"
  exit 0
fi
dsm_client_ready
"$SR_BIN/release/dsm-transport-check" --nodes "$SR_PEER_IP:$PORT" --transport verbs \
  --timeout-ms 10000 --node-death "$SR_OUT/death" >"$SR_OUT/check.txt" 2>&1
rc=$?
sr_barrier done 10
cat "$SR_OUT/check.txt"
[ $rc = 0 ] || sr_fail "dsm-transport-check over verbs failed (rc $rc)"
grep -q '^transport verbs' "$SR_OUT/check.txt" || sr_fail "the check did not run over verbs"
sr_summary "$(grep '^transport-check:' "$SR_OUT/check.txt")"
sr_summary "  $(grep 'compare-and-swap' "$SR_OUT/check.txt" | sed 's/^ok *//' | tr '\n' ';' | sed 's/;$//')"
sr_summary "  $(grep '^node death: first' "$SR_OUT/check.txt")"
exit 0
