# Connection setup through the rdma_cm stack (rdma_cm/rdma_ucm/iw_cm/ib_cm
# modules, librdmacm): perftest's ib_read_lat with -R, 4096 B.
#
# Under QEMU's emulation a connection request is now and then lost, and perftest
# then waits for the CM forever on both sides (seen once in ~10 runs). So each
# attempt is bounded, uses a port of its own (no stale listener or CM state), and
# both roles publish their exit status before a barrier, so they agree on whether
# to try again. Three attempts; the test fails only if all three do.
# sr-timeout: 150
. "$SR_LIB"
ATTEMPT_S=25
attempt_ok() { # attempt: both roles' ib_read_lat exited 0
  [ "$(cat "$SR_OUT/rc.a.$1" 2>/dev/null)" = 0 ] && [ "$(cat "$SR_OUT/rc.b.$1" 2>/dev/null)" = 0 ]
}
for k in 1 2 3; do
  port=$((18516 + k))
  ARGS="-d $SR_IBDEV -i 1 -s 4096 -F -R -n 200 -p $port"
  out="$SR_OUT/ib_read_lat-R.$SR_ROLE.$k.txt"
  if [ "$SR_ROLE" = a ]; then
    timeout "$ATTEMPT_S" ib_read_lat $ARGS >"$out" 2>&1 &
    srv=$!
    # with -R the server listens through rdma_cm (no TCP socket to watch)
    sr_wait_cm_listen "$port" 20 || { kill $srv; sr_fail "ib_read_lat -R server did not listen on $port"; }
    sr_barrier "listening.$k" 40 || { kill $srv; sr_fail "client never came"; }
    wait $srv
    echo $? >"$SR_OUT/rc.a.$k"
  else
    sr_barrier "listening.$k" 40 || sr_fail "server never started"
    timeout "$ATTEMPT_S" ib_read_lat $ARGS "$SR_PEER_IP" >"$out" 2>&1
    echo $? >"$SR_OUT/rc.b.$k"
  fi
  sr_barrier "done.$k" 40 || sr_fail "peer did not finish attempt $k"
  cat "$out"
  if attempt_ok $k; then
    if [ "$SR_ROLE" = b ]; then
      lat=$(awk '$1 == 4096 && NF >= 9 {printf "t_typical %s us, t_avg %s us", $5, $6}' "$out")
      [ -n "$lat" ] || sr_fail "no 4096 B result line in ib_read_lat's output"
      sr_summary "ib_read_lat -R (rdma_cm) 4096 B x 200: $lat (attempt $k)"
    fi
    exit 0
  fi
  sr_log "attempt $k failed (server rc $(cat "$SR_OUT/rc.a.$k"), client rc $(cat "$SR_OUT/rc.b.$k"))"
done
sr_fail "ib_read_lat -R failed in all 3 attempts"
