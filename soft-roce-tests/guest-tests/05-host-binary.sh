# A binary built on the host runs in the guest over 9p and does verbs:
# soft-roce-tests/probe/verbs_probe.rs (open rxe0, alloc PD, register a MR).
# Also checks that the project's binaries ($SR_BIN) are mounted.
# sr-timeout: 30
. "$SR_LIB"
grep -q ' /host/bin 9p ' /proc/mounts || sr_fail "project binary dir not mounted at $SR_BIN"
[ -x "$SR_SHARE/bin/verbs-probe" ] || sr_skip "verbs-probe not built (no rustc/cc on the host)"
"$SR_SHARE/bin/verbs-probe" "$SR_IBDEV" || sr_fail "verbs-probe failed"
[ "$SR_ROLE" = a ] && sr_summary "host-built Rust verbs-probe: opened $SR_IBDEV, PD + 4 KiB MR registered in both guests"
exit 0
