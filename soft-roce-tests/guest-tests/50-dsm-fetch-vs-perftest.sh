# Our per-page fetch over verbs beside perftest's RDMA READ, in the same guests, one
# after the other: dsm-fetch-bench (1000 single-page round trips; 1000 pages in
# batches of 32) against `dsmrun node` in A, then ib_read_lat / ib_read_bw (4096 B x
# 1000) between the same guests. The summary prints both and the ratios.
# sr-timeout: 200
. "$SR_LIB"
dsm_bin dsmrun dsm-fetch-bench
PORT=18702
PT="-d $SR_IBDEV -i 1 -x $SR_GID_INDEX -s 4096 -n 1000 -F"
if [ "$SR_ROLE" = a ]; then
  dsm_node_serve $PORT 64M 120
  ib_read_lat $PT -p 18517 >"$SR_OUT/ib_read_lat.a.txt" 2>&1 &
  srv=$!
  sr_wait_listen 18517 20 || sr_fail "ib_read_lat server did not listen"
  sr_barrier lat 30 || sr_fail "client never came for ib_read_lat"
  wait $srv || sr_fail "ib_read_lat server failed"
  ib_read_bw $PT -p 18518 >"$SR_OUT/ib_read_bw.a.txt" 2>&1 &
  srv=$!
  sr_wait_listen 18518 20 || sr_fail "ib_read_bw server did not listen"
  sr_barrier bw 30 || sr_fail "client never came for ib_read_bw"
  wait $srv || sr_fail "ib_read_bw server failed"
  exit 0
fi
dsm_client_ready
B="$SR_BIN/release/dsm-fetch-bench --nodes $SR_PEER_IP:$PORT --iters 1000 --batch 32"
$B --transport verbs >"$SR_OUT/fetch-verbs.txt" 2>&1; rc=$?
$B --transport tcp >"$SR_OUT/fetch-tcp.txt" 2>&1; rc_tcp=$?
sr_barrier done 10
cat "$SR_OUT/fetch-verbs.txt" "$SR_OUT/fetch-tcp.txt"
[ $rc = 0 ] || sr_fail "dsm-fetch-bench over verbs failed"
[ $rc_tcp = 0 ] || sr_fail "dsm-fetch-bench over tcp failed"
sr_barrier lat 30 || sr_fail "ib_read_lat server never listened"
ib_read_lat $PT -p 18517 "$SR_PEER_IP" >"$SR_OUT/ib_read_lat.b.txt" 2>&1 || { cat "$SR_OUT/ib_read_lat.b.txt"; sr_fail "ib_read_lat failed"; }
sr_barrier bw 30 || sr_fail "ib_read_bw server never listened"
ib_read_bw $PT -p 18518 "$SR_PEER_IP" >"$SR_OUT/ib_read_bw.b.txt" 2>&1 || { cat "$SR_OUT/ib_read_bw.b.txt"; sr_fail "ib_read_bw failed"; }
cat "$SR_OUT/ib_read_lat.b.txt" "$SR_OUT/ib_read_bw.b.txt"

# perftest: ib_read_lat columns: bytes iters t_min t_max t_typical t_avg t_stdev 99% 99.9%
#           ib_read_bw  columns: bytes iters BW_peak BW_average MsgRate (MB/s = 2^20 B/s)
pl=$(awk '$1 == 4096 && NF >= 9 {print $3, $5, $6, $8}' "$SR_OUT/ib_read_lat.b.txt")
pb=$(awk '$1 == 4096 && NF >= 5 {print $4}' "$SR_OUT/ib_read_bw.b.txt")
ol=$(sed -n 's/^fetch_lat.*t_min \([0-9.]*\) us, t_typical \([0-9.]*\) us, t_avg \([0-9.]*\) us, 99% \([0-9.]*\) us.*/\1 \2 \3 \4/p' "$SR_OUT/fetch-verbs.txt")
ob=$(sed -n 's/^fetch_bw.*: \([0-9.]*\) MB\/s.*/\1/p' "$SR_OUT/fetch-verbs.txt")
tl=$(sed -n 's/^fetch_lat.*t_typical \([0-9.]*\) us.*/\1/p' "$SR_OUT/fetch-tcp.txt")
tb=$(sed -n 's/^fetch_bw.*: \([0-9.]*\) MB\/s.*/\1/p' "$SR_OUT/fetch-tcp.txt")
[ -n "$pl" ] && [ -n "$pb" ] && [ -n "$ol" ] && [ -n "$ob" ] || sr_fail "cannot parse the figures (perftest: '$pl' '$pb', ours: '$ol' '$ob')"
echo "$pl $ol" | awk '{printf "4 KiB READ latency, us      t_min  t_typical  t_avg    99%%\n  ib_read_lat              %7.1f %9.1f %7.1f %7.1f\n  dsm fetch (verbs)        %7.1f %9.1f %7.1f %7.1f\n  ratio dsm/perftest       %7.2f %9.2f %7.2f %7.2f\n", $1,$2,$3,$4, $5,$6,$7,$8, $5/$1,$6/$2,$7/$3,$8/$4}' >"$SR_OUT/compare.txt"
echo "$pb $ob" | awk '{printf "4 KiB READ throughput: ib_read_bw %.2f MB/s, dsm fetch (verbs, batches of 32) %.2f MB/s, ratio %.2f\n", $1, $2, $2/$1}' >>"$SR_OUT/compare.txt"
cat "$SR_OUT/compare.txt"
sr_summary "$(echo "$pl $ol" | awk '{printf "latency 4 KiB t_typical: dsm fetch over verbs %.0f us vs ib_read_lat %.0f us: ratio %.2f (t_min %.0f vs %.0f us: %.2f)", $6, $2, $6/$2, $5, $1, $5/$1}')"
sr_summary "$(echo "$pb $ob" | awk '{printf "throughput 4 KiB: dsm fetch over verbs %.2f MB/s (batches of 32) vs ib_read_bw %.2f MB/s: ratio %.2f", $2, $1, $2/$1}')"
sr_summary "  (same node over TCP on the emulated link: t_typical ${tl} us, ${tb} MB/s)"
exit 0
