# Sourced by the Velvet benchmarks: the kernel's answer to too little memory, swap on
# zram (lz4, 4 GiB) under a memory cgroup (v1) limit.
#
#   zram_swap_on           swap on /dev/zram0 unless some zram swap is on already (then
#                          left alone); turned off again when the script exits
#   swap_cgroup NAME MIB   creates memory cgroup NAME limited to MIB MiB; prints its path

zram_swap_on() {
    grep -q zram /proc/swaps && return 0
    [ "$(cat /sys/block/zram0/disksize)" = 0 ] || { echo "zram0 is in use; not touching it" >&2; exit 1; }
    echo lz4 >/sys/block/zram0/comp_algorithm 2>/dev/null || true
    echo 4G >/sys/block/zram0/disksize
    mkswap /dev/zram0 >/dev/null
    swapon -p 100 /dev/zram0
    trap 'swapoff /dev/zram0; echo 1 >/sys/block/zram0/reset' EXIT
}

swap_cgroup() {
    local cg=/sys/fs/cgroup/memory/$1
    mkdir -p "$cg"
    echo $(($2 << 20)) >"$cg/memory.limit_in_bytes"
    echo 60 >"$cg/memory.swappiness" 2>/dev/null || true
    echo "$cg"
}
