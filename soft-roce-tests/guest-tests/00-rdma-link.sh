# Sanity: rxe0 is ACTIVE on both guests, RoCE v2 GID present, peer reachable.
# sr-timeout: 30
. "$SR_LIB"
ibv_devices
ibv_devinfo -d "$SR_IBDEV" | tee /tmp/devinfo
grep -q 'state:.*PORT_ACTIVE' /tmp/devinfo || sr_fail "$SR_IBDEV port not ACTIVE"
grep -q 'transport:.*InfiniBand' /tmp/devinfo || sr_fail "unexpected transport"
rdma link show | grep -q "rxe0/1 state ACTIVE.*netdev $SR_NETDEV" || sr_fail "rdma link show: $(rdma link show)"
echo "gid[$SR_GID_INDEX] = $(cat /sys/class/infiniband/$SR_IBDEV/ports/1/gids/$SR_GID_INDEX)"
ping -c 3 -i 0.2 -W 5 "$SR_PEER_IP" || sr_fail "no IP connectivity to $SR_PEER_IP"
[ "$SR_ROLE" = a ] && sr_summary "rxe0 ACTIVE on both guests, RoCE v2 GID index $SR_GID_INDEX, MTU $(sed -n 's/.*active_mtu:[[:space:]]*\([0-9]*\).*/\1/p' /tmp/devinfo)"
exit 0
