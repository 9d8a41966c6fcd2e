# Our per-page fetch over verbs beside perftest's RDMA READ, in the same guests, one
# after the other: dsm-fetch-bench (1000 single-page round trips; 1000 pages in
# batches of 32) against `dsmrun node` in A, then ib_read_lat / ib_read_bw (4096 B x
# 1000) between the same guests. The summary prints both and the ratios, and the test
# fails when ours fall outside the bounds below (see RATIO BOUNDS).
# sr-timeout: 200
. "$SR_LIB"
dsm_bin dsmrun dsm-fetch-bench
PORT=18702
BW_ATTEMPTS="1 2 3"
PT="-d $SR_IBDEV -i 1 -x $SR_GID_INDEX -s 4096 -n 1000 -F"
if [ "$SR_ROLE" = a ]; then
  dsm_node_serve $PORT 64M 120
  ib_read_lat $PT -p 18517 >"$SR_OUT/ib_read_lat.a.txt" 2>&1 &
  srv=$!
  sr_wait_listen 18517 20 || sr_fail "ib_read_lat server did not listen"
  sr_barrier lat 30 || sr_fail "client never came for ib_read_lat"
  wait $srv || sr_fail "ib_read_lat server failed"
  for k in $BW_ATTEMPTS; do
    ib_read_bw $PT -p $((18517 + k)) >"$SR_OUT/ib_read_bw.a.$k.txt" 2>&1 &
    srv=$!
    sr_wait_listen $((18517 + k)) 20 || sr_fail "ib_read_bw server did not listen"
    sr_barrier "bw.$k" 30 || sr_fail "client never came for ib_read_bw"
    wait $srv || sr_fail "ib_read_bw server failed"
    sr_barrier "bwdone.$k" 60 || sr_fail "client never finished ib_read_bw attempt $k"
    [ -e "$SR_OUT/bw.ok.$k" ] && exit 0
  done
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
# Under emulation ib_read_bw now and then reports 0.00 MB/s for a run that completed
# (seen once in CI); such a run is repeated, on a fresh port, up to three times.
for k in $BW_ATTEMPTS; do
  sr_barrier "bw.$k" 30 || sr_fail "ib_read_bw server never listened"
  ib_read_bw $PT -p $((18517 + k)) "$SR_PEER_IP" >"$SR_OUT/ib_read_bw.b.txt" 2>&1 || { cat "$SR_OUT/ib_read_bw.b.txt"; sr_fail "ib_read_bw failed"; }
  bw_ok=$(awk '$1 == 4096 && NF >= 5 && $4 > 0 {print "yes"}' "$SR_OUT/ib_read_bw.b.txt")
  [ -n "$bw_ok" ] && : >"$SR_OUT/bw.ok.$k"
  sr_barrier "bwdone.$k" 60 || sr_fail "ib_read_bw server never finished attempt $k"
  [ -n "$bw_ok" ] && break
  sr_log "ib_read_bw attempt $k reported a zero figure"
done
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

# RATIO BOUNDS. Under TCG every figure here is dominated by the emulated kernel's rxe,
# and the two measurements run one after the other on a machine shared with builds, so
# load moves them apart: over five runs at load 4-10 (docs/rdma.md, "Figures") our
# latency was 0.75-1.10x ib_read_lat's at t_min and 0.93-2.13x at t_typical, and our
# batched throughput 0.33-2.68x ib_read_bw's. The bounds leave about ten times the
# worst observed spread, so load alone does not fail the run, while a fetch path that
# costs an order of magnitude more than the READ under it (a memory registration or a
# queue-pair set-up per read, a completion wait that sleeps instead of polling, reads
# serialised inside a batch) does: per-page latency at most 10x perftest's at t_min and
# 20x at t_typical, throughput at least 1/20 of ib_read_bw's.
LAT_MIN_RATIO_MAX=10
LAT_TYPICAL_RATIO_MAX=20
BW_RATIO_MIN=0.05
# Fields: perftest t_min t_typical t_avg 99% ($1-$4), ours the same ($5-$8), perftest
# MB/s ($9), ours ($10).
over=$(echo "$pl $ol $pb $ob" | awk -v lm=$LAT_MIN_RATIO_MAX -v lt=$LAT_TYPICAL_RATIO_MAX -v bm=$BW_RATIO_MIN '{
  if ($1 <= 0 || $2 <= 0 || $9 <= 0) { print "perftest reported a zero figure: " $0; exit }
  if ($5 / $1 > lm) printf "latency t_min %.0f us is %.1fx ib_read_lat'"'"'s %.0f us (bound %sx); ", $5, $5 / $1, $1, lm
  if ($6 / $2 > lt) printf "latency t_typical %.0f us is %.1fx ib_read_lat'"'"'s %.0f us (bound %sx); ", $6, $6 / $2, $2, lt
  if ($10 / $9 < bm) printf "throughput %.2f MB/s is %.3fx ib_read_bw'"'"'s %.2f MB/s (bound %sx); ", $10, $10 / $9, $9, bm
}')
[ -z "$over" ] || sr_fail "dsm fetch over verbs is out of bounds against perftest: $over"
sr_summary "  within bounds: latency <= ${LAT_MIN_RATIO_MAX}x (t_min) and ${LAT_TYPICAL_RATIO_MAX}x (t_typical) ib_read_lat's, throughput >= ${BW_RATIO_MIN}x ib_read_bw's"
exit 0
