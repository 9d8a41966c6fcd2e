# Helpers for soft-roce guest tests (busybox sh). A test does: . "$SR_LIB"
#
# Environment every test gets (see docs/rdma.md, "Writing a guest test"):
#   SR_ROLE       a | b            (a = 192.0.2.1, conventionally the server)
#   SR_PEER_ROLE  b | a
#   SR_MY_IP      this guest's IPv4 address on the RDMA link
#   SR_PEER_IP    the other guest's address
#   SR_IBDEV      rxe0             (the Soft-RoCE device, port 1)
#   SR_NETDEV     eth0
#   SR_GID_INDEX  GID index of the RoCE v2 IPv4 GID of rxe0
#   SR_BIN        host binaries, read-only 9p mount (SOFT_ROCE_BIN_DIR, default target/)
#   SR_SHARE      /sr, the run directory shared read-write with the host
#   SR_TEST       the test's name (file name without .sh)
#   SR_OUT        $SR_SHARE/out/$SR_TEST, shared by both roles; the host shows
#                 $SR_OUT/summary after the run
#   SR_LIB        this file
# Exit status: 0 pass, 77 skip (see sr_skip), anything else fails.

sr_log() { echo "[$SR_ROLE $(cut -d' ' -f1 /proc/uptime)] $*"; }

sr_fail() { sr_log "FAIL: $*"; exit 1; }

# sr_skip REASON: mark this role as skipped (a test passes if one role passed
# and the other skipped; it is SKIP when both skipped).
sr_skip() { echo "$*" >"$SR_OUT/skip.$SR_ROLE"; sr_log "SKIP: $*"; exit 77; }

# sr_summary LINE...: one line for the host's summary (call it from one role).
sr_summary() { echo "$*" >>"$SR_OUT/summary"; sr_log "summary: $*"; }

# sr_barrier NAME [TIMEOUT_S]: wait until the peer reached the same barrier of
# the same test. Files on the shared 9p directory (no cache) carry the state.
sr_barrier() {
  _b="$SR_SHARE/sync/${SR_TEST:-main}.$1"
  _t=${2:-60}
  : >"$_b.$SR_ROLE"
  _end=$(( $(cut -d. -f1 /proc/uptime) + _t ))
  while [ ! -e "$_b.$SR_PEER_ROLE" ]; do
    if [ "$(cut -d. -f1 /proc/uptime)" -ge "$_end" ]; then
      sr_log "barrier $1: peer $SR_PEER_ROLE did not arrive within ${_t}s"
      return 1
    fi
    sleep 0.1
  done
  return 0
}

# sr_wait_listen PORT [TIMEOUT_S]: wait until a local TCP socket listens on PORT.
sr_wait_listen() {
  _p=$(printf ':%04X ' "$1")
  _end=$(( $(cut -d. -f1 /proc/uptime) + ${2:-30} ))
  while ! grep -q "^ *[0-9]*: [0-9A-F]*${_p}[0-9A-F:]* 0A" /proc/net/tcp /proc/net/tcp6 2>/dev/null; do
    [ "$(cut -d. -f1 /proc/uptime)" -ge "$_end" ] && { sr_log "nothing listens on TCP port $1"; return 1; }
    sleep 0.1
  done
  return 0
}

# sr_wait_cm_listen PORT [TIMEOUT_S]: wait until an rdma_cm id listens on PORT
# (servers using librdmacm have no TCP socket to watch).
sr_wait_cm_listen() {
  _end=$(( $(cut -d. -f1 /proc/uptime) + ${2:-30} ))
  while ! rdma resource show cm_id 2>/dev/null | grep -q "LISTEN.*:$1 "; do
    [ "$(cut -d. -f1 /proc/uptime)" -ge "$_end" ] && { sr_log "no rdma_cm listener on port $1"; return 1; }
    sleep 0.1
  done
  return 0
}

# ---- the project's memory node (dsmrun node, built with --features verbs) ----------
# dsm_bin NAME...: fail unless each $SR_BIN/release/NAME exists (soft-roce-tests/run
# builds them with `cargo build --release --features verbs`).
dsm_bin() {
  for _n in "$@"; do
    [ -x "$SR_BIN/release/$_n" ] || sr_fail "$SR_BIN/release/$_n missing (soft-roce-tests/run builds it unless SOFT_ROCE_NO_BUILD=1)"
  done
}

# dsm_node_serve PORT MEMORY [TIMEOUT_S]: (role a) run a memory node (id 0) on
# $SR_MY_IP:PORT with a fresh job secret (left in $SR_OUT/secret for role b), wait
# for role b's "done" barrier, stop the node and print its log.
dsm_node_serve() {
  dsm_node_start "$1" "$2"
  sr_barrier done "${3:-120}" || sr_log "client did not reach 'done'"
  dsm_node_stop
}

# dsm_node_start PORT MEMORY [COUNT]: (role a) the first half of dsm_node_serve:
# start COUNT nodes (ids 0.., ports PORT, PORT+1 ..; default 1), wait until the
# client came. Pids in $DSM_NODE_PIDS, node 0's in $DSM_NODE_PID; logs node.<id>.err
# (node 0's also as node.err).
dsm_node_start() {
  head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$SR_OUT/secret"
  DSM_NODE_PIDS=
  _i=0
  while [ $_i -lt "${3:-1}" ]; do
    DSM_SECRET=$(cat "$SR_OUT/secret") "$SR_BIN/release/dsmrun" node --id $_i \
      --listen "$SR_MY_IP:$(( $1 + _i ))" --memory "$2" >"$SR_OUT/node.$_i.out" 2>"$SR_OUT/node.$_i.err" &
    DSM_NODE_PIDS="$DSM_NODE_PIDS $!"
    [ $_i = 0 ] && DSM_NODE_PID=$!
    sr_wait_listen $(( $1 + _i )) 30 || { cat "$SR_OUT/node.$_i.err"; sr_fail "memory node $_i did not listen on $(( $1 + _i ))"; }
    _i=$(( _i + 1 ))
  done
  sr_barrier node-up 60 || { kill $DSM_NODE_PIDS; sr_fail "client never came"; }
}

# dsm_node_stop: (role a) kill the nodes and print their logs.
dsm_node_stop() {
  for _p in $DSM_NODE_PIDS; do kill "$_p" 2>/dev/null; wait "$_p" 2>/dev/null; done
  for _f in "$SR_OUT"/node.*.err; do sr_log "memory node log ${_f##*/}:"; cat "$_f"; done
  cp "$SR_OUT/node.0.err" "$SR_OUT/node.err" 2>/dev/null
  return 0
}

# dsm_client_ready: (role b) wait for the node; exports DSM_SECRET.
dsm_client_ready() {
  sr_barrier node-up 60 || sr_fail "memory node never came up in guest a"
  DSM_SECRET=$(cat "$SR_OUT/secret"); export DSM_SECRET
}
