# Runs in each guest (busybox sh) from the 9p share /sr, started by /init.
# Brings up eth0 + rxe0, then runs every test of /sr/tests.list in order,
# synchronised with the peer guest, recording results under /sr/out/<test>/.
ROLE=; MY_IP=; PEER_IP=; MTU=1500
for kv in $(cat /proc/cmdline); do
  case $kv in
    sr.role=*) ROLE=${kv#sr.role=} ;;
    sr.ip=*) MY_IP=${kv#sr.ip=} ;;
    sr.peer=*) PEER_IP=${kv#sr.peer=} ;;
    sr.mtu=*) MTU=${kv#sr.mtu=} ;;
  esac
done
[ "$ROLE" = a ] && PEER_ROLE=b || PEER_ROLE=a
G=/sr/guest/$ROLE
mkdir -p "$G"

export SR_ROLE=$ROLE SR_PEER_ROLE=$PEER_ROLE SR_MY_IP=$MY_IP SR_PEER_IP=$PEER_IP
export SR_IBDEV=rxe0 SR_NETDEV=eth0 SR_BIN=/host/bin SR_SHARE=/sr SR_LIB=/sr/sr-lib.sh
. /sr/sr-lib.sh

con() { echo "SR[$ROLE $(cut -d' ' -f1 /proc/uptime)]: $*" >/dev/console; }
setup_fail() {
  { echo "$*"; echo "-- dmesg (tail) --"; dmesg | tail -n 25; } >"$G/failed.tmp"
  mv "$G/failed.tmp" "$G/failed"
  con "SETUP FAILED: $*"
  exit 1
}
exec >"$G/setup.log" 2>&1
set -x

cp /run/sr-init-uptime "$G/init-uptime"
cp /run/sr-insmod.log "$G/insmod.log"
[ -s /run/sr-insmod.log ] && setup_fail "module load failed: $(cat /run/sr-insmod.log)"

ip link set lo up
ip addr add "$MY_IP/24" dev eth0 || setup_fail "ip addr add $MY_IP on eth0"
ip link set eth0 mtu "$MTU" || setup_fail "ip link set eth0 mtu $MTU"
ip link set eth0 up || setup_fail "ip link set eth0 up"
rdma link add rxe0 type rxe netdev eth0 || setup_fail "rdma link add rxe0 type rxe netdev eth0 failed"
rdma link show

i=0
until ibv_devinfo -d rxe0 2>/dev/null | grep -q 'state:.*PORT_ACTIVE'; do
  i=$((i + 1))
  [ $i -ge 100 ] && setup_fail "rxe0 port not ACTIVE after 20 s: $(ibv_devinfo -d rxe0 2>&1 | tr '\n' ' ')"
  sleep 0.2
done
ibv_devices >"$G/ibv_devices.txt" 2>&1
ibv_devinfo -v -d rxe0 >"$G/ibv_devinfo.txt" 2>&1

# RoCE v2 GID of our IPv4 address (::ffff:a.b.c.d)
SR_GID_INDEX=
for f in /sys/class/infiniband/rxe0/ports/1/gids/*; do
  n=${f##*/}
  gid=$(cat "$f" 2>/dev/null) || continue
  case $gid in 0000:0000:0000:0000:0000:ffff:*)
    t=$(cat "/sys/class/infiniband/rxe0/ports/1/gid_attrs/types/$n" 2>/dev/null)
    case $t in *v2*) SR_GID_INDEX=$n; break ;; esac ;;
  esac
done
[ -n "$SR_GID_INDEX" ] || setup_fail "no RoCE v2 IPv4 GID on rxe0"
export SR_GID_INDEX
echo "$SR_GID_INDEX" >"$G/gid-index"

set +x
counters() {  # name value lines of rxe0's protocol counters
  for f in /sys/class/infiniband/rxe0/ports/1/hw_counters/*; do
    echo "${f##*/} $(cat "$f")"
  done
}

cut -d' ' -f1 /proc/uptime >"$G/ready"
con "rxe0 ACTIVE, gid index $SR_GID_INDEX"

SR_TEST=main sr_barrier ready 60 || setup_fail "peer guest never became ready"
ping -c 1 -W 5 "$PEER_IP" || setup_fail "cannot ping peer $PEER_IP over eth0"

DEFAULT_TO=$(cat /sr/test-timeout 2>/dev/null || echo 90)
prev_to=0
for t in $(cat /sr/tests.list); do
  out=/sr/out/$t
  mkdir -p "$out"
  to=$(sed -n 's/^# *sr-timeout: *\([0-9][0-9]*\).*/\1/p' "/sr/tests/$t.sh" | head -1)
  to=${to:-$DEFAULT_TO}
  # start every test together (the peer may still be in its previous test)
  if ! SR_TEST=$t sr_barrier start $((prev_to + 30)); then
    echo 125 >"$out/rc.$ROLE"; echo "peer never started this test" >"$out/log.$ROLE"
    prev_to=$to
    continue
  fi
  prev_to=$to
  con "test $t: start (timeout ${to}s)"
  counters >/tmp/c0
  t0=$(cut -d' ' -f1 /proc/uptime)
  SR_TEST=$t SR_OUT=$out setsid timeout "$to" sh "/sr/tests/$t.sh" >"$out/log.$ROLE" 2>&1 </dev/null &
  pid=$!
  wait $pid
  rc=$?
  kill -KILL -- "-$pid" 2>/dev/null   # leftovers of the test's process group
  t1=$(cut -d' ' -f1 /proc/uptime)
  dt=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", b-a}')
  if [ "$rc" -ne 0 ] && [ "$rc" -ne 77 ] && awk -v d="$dt" -v t="$to" 'BEGIN{exit !(d >= t)}'; then
    echo "TIMEOUT after ${to}s" >>"$out/log.$ROLE"
  fi
  counters >/tmp/c1
  # non-zero counter deltas during this test (retransmissions show up here)
  awk 'NR == FNR {c0[$1] = $2; next} $1 != "lifespan" && $2 - c0[$1] != 0 {printf "%s%s=%d", sep, $1, $2 - c0[$1]; sep = " "}
       END {print ""}' /tmp/c0 /tmp/c1 >"$out/counters.$ROLE"
  echo "$dt" >"$out/time.$ROLE"
  echo "$rc" >"$out/rc.$ROLE"
  con "test $t: rc=$rc in ${dt}s"
done

SR_TEST=main sr_barrier end 60
# rxe protocol counters (retransmissions, sequence errors...) and NIC drops
counters >"$G/hw_counters.txt" 2>&1
ip -s link show eth0 >"$G/link-stats.txt" 2>&1
cut -d' ' -f1 /proc/uptime >"$G/done"
con "all tests done"
exit 0
