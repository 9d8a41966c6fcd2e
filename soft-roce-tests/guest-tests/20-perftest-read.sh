# perftest RDMA READ latency and bandwidth, 4096-byte messages, server in
# guest A, client in guest B. No -R: the out-of-band exchange is perftest's
# own TCP socket, so the rdma_cm stack is not involved.
# sr-timeout: 120
. "$SR_LIB"
COMMON="-d $SR_IBDEV -i 1 -x $SR_GID_INDEX -s 4096 -F"
LAT="$COMMON -n 1000 -p 18515"
BW="$COMMON -n 1000 -p 18516"

if [ "$SR_ROLE" = a ]; then
  for t in lat bw; do
    if [ $t = lat ]; then ib_read_lat $LAT >"$SR_OUT/ib_read_lat.a.txt" 2>&1 & port=18515
    else ib_read_bw $BW >"$SR_OUT/ib_read_bw.a.txt" 2>&1 & port=18516; fi
    srv=$!
    sr_wait_listen $port 20 || sr_fail "ib_read_$t server did not listen"
    sr_barrier $t-listening 30 || sr_fail "client never came for ib_read_$t"
    wait $srv || { cat "$SR_OUT/ib_read_$t.a.txt"; sr_fail "ib_read_$t server failed"; }
    cat "$SR_OUT/ib_read_$t.a.txt"
  done
  exit 0
fi

sr_barrier lat-listening 30 || sr_fail "ib_read_lat server never listened"
ib_read_lat $LAT "$SR_PEER_IP" >"$SR_OUT/ib_read_lat.b.txt" 2>&1 || { cat "$SR_OUT/ib_read_lat.b.txt"; sr_fail "ib_read_lat client failed"; }
cat "$SR_OUT/ib_read_lat.b.txt"
# columns: #bytes #iterations t_min t_max t_typical t_avg t_stdev 99% 99.9%
lat=$(awk '$1 == 4096 && NF >= 9 {printf "t_min %s us, t_typical %s us, t_avg %s us, 99%% %s us, t_max %s us", $3, $5, $6, $8, $4}' "$SR_OUT/ib_read_lat.b.txt")
[ -n "$lat" ] || sr_fail "cannot parse ib_read_lat output"
sr_summary "ib_read_lat 4096 B x 1000: $lat"

sr_barrier bw-listening 30 || sr_fail "ib_read_bw server never listened"
ib_read_bw $BW "$SR_PEER_IP" >"$SR_OUT/ib_read_bw.b.txt" 2>&1 || { cat "$SR_OUT/ib_read_bw.b.txt"; sr_fail "ib_read_bw client failed"; }
cat "$SR_OUT/ib_read_bw.b.txt"
# columns: #bytes #iterations BW_peak[MB/sec] BW_average[MB/sec] MsgRate[Mpps]
bw=$(awk '$1 == 4096 && NF >= 5 {printf "BW average %s MB/s (peak %s MB/s), %s Mpps", $4, $3, $5}' "$SR_OUT/ib_read_bw.b.txt")
[ -n "$bw" ] || sr_fail "cannot parse ib_read_bw output"
sr_summary "ib_read_bw  4096 B x 1000: $bw"
