# Connection setup through the rdma_cm stack (rdma_cm/rdma_ucm/iw_cm/ib_cm
# modules, librdmacm): perftest's ib_read_lat with -R, 4096 B.
# sr-timeout: 60
. "$SR_LIB"
ARGS="-d $SR_IBDEV -i 1 -s 4096 -F -R -n 200 -p 18517"
if [ "$SR_ROLE" = a ]; then
  ib_read_lat $ARGS >"$SR_OUT/ib_read_lat-R.a.txt" 2>&1 &
  srv=$!
  # with -R the server listens through rdma_cm (no TCP socket to watch)
  sr_wait_cm_listen 18517 20 || sr_fail "ib_read_lat -R server did not listen"
  rdma resource show cm_id
  sr_barrier listening 30 || sr_fail "client never came"
  wait $srv || { cat "$SR_OUT/ib_read_lat-R.a.txt"; sr_fail "server side failed"; }
  cat "$SR_OUT/ib_read_lat-R.a.txt"
else
  sr_barrier listening 30 || sr_fail "server never started"
  ok=
  for _try in 1 2 3; do   # belt and braces: retry a refused connect
    if ib_read_lat $ARGS "$SR_PEER_IP" >"$SR_OUT/ib_read_lat-R.b.txt" 2>&1; then ok=1; break; fi
    sleep 1
  done
  cat "$SR_OUT/ib_read_lat-R.b.txt"
  [ -n "$ok" ] || sr_fail "ib_read_lat -R client failed"
  lat=$(awk '$1 == 4096 && NF >= 9 {printf "t_typical %s us, t_avg %s us", $5, $6}' "$SR_OUT/ib_read_lat-R.b.txt")
  sr_summary "ib_read_lat -R (rdma_cm) 4096 B x 200: $lat"
fi
