#!/usr/bin/env bash
# Runs a command on a slower machine: its processes (and all they start) held to PERCENT % of
# this machine's CPU time by a cgroup quota (cgroup v1 or v2; needs root), so a test that only
# passes on a fast CPU shows itself here rather than on a slower CI machine.
#
#   scripts/slow_cpu.sh 50 make test     # the whole suite on half the CPU
#
# The quota spans all cores: 50 on 2 cores is one core's worth, spread over both.
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: $0 PERCENT COMMAND..." >&2; exit 2; }
percent=$1; shift
[[ "$percent" =~ ^[0-9]+$ ]] && [ "$percent" -ge 1 ] && [ "$percent" -le 100 ] \
  || { echo "PERCENT must be 1..100" >&2; exit 2; }
period=100000
quota=$(( $(nproc) * period * percent / 100 ))
name="embedserve-slow-$$"
if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
  group=/sys/fs/cgroup/$name
  grep -qw cpu /sys/fs/cgroup/cgroup.subtree_control || echo +cpu > /sys/fs/cgroup/cgroup.subtree_control
  mkdir "$group"
  echo "$quota $period" > "$group/cpu.max"
else
  group=/sys/fs/cgroup/cpu/$name
  mkdir "$group"
  echo "$period" > "$group/cpu.cfs_period_us"
  echo "$quota" > "$group/cpu.cfs_quota_us"
fi
cleanup() {
  # Move what is left back to the root group, then remove ours.
  while read -r pid; do echo "$pid" > "$(dirname "$group")/cgroup.procs" 2>/dev/null || true; done \
    < "$group/cgroup.procs" 2>/dev/null || true
  rmdir "$group" 2>/dev/null || true
}
trap cleanup EXIT
echo "slow_cpu: $percent% of $(nproc) CPUs (quota $quota us per $period us) for: $*" >&2
status=0
( echo "$BASHPID" > "$group/cgroup.procs" && exec "$@" ) || status=$?
exit "$status"
