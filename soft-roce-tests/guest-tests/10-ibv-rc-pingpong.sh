# Plain verbs RC send/recv between the guests (rdma-core's ibv_rc_pingpong):
# the closest stand-in for a verbs transport until the project has one.
# sr-timeout: 60
. "$SR_LIB"
ARGS="-d $SR_IBDEV -i 1 -g $SR_GID_INDEX -s 4096 -n 200 -p 18600"
if [ "$SR_ROLE" = a ]; then
  ibv_rc_pingpong $ARGS >"$SR_OUT/pingpong.a.txt" 2>&1 &
  srv=$!
  sr_wait_listen 18600 20 || sr_fail "ibv_rc_pingpong server did not listen"
  sr_barrier listening 30 || sr_fail "client never came"
  wait $srv || { cat "$SR_OUT/pingpong.a.txt"; sr_fail "server side failed"; }
  cat "$SR_OUT/pingpong.a.txt"
else
  sr_barrier listening 30 || sr_fail "server never listened"
  ibv_rc_pingpong $ARGS "$SR_PEER_IP" >"$SR_OUT/pingpong.b.txt" 2>&1 || { cat "$SR_OUT/pingpong.b.txt"; sr_fail "client side failed"; }
  cat "$SR_OUT/pingpong.b.txt"
  # "819200 bytes in 0.52 seconds = 12.60 Mbit/sec" / "200 iters in 0.52 seconds = 2600.00 usec/iter"
  us=$(sed -n 's/.* iters in .* = \([0-9.]*\) usec\/iter.*/\1/p' "$SR_OUT/pingpong.b.txt")
  [ -n "$us" ] || sr_fail "cannot parse ibv_rc_pingpong output"
  sr_summary "ibv_rc_pingpong 4096 B, 200 iters: $us us/iter (round trip)"
fi
