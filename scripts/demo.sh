#!/bin/bash
# Set up (idempotently) and run isobox's main job: build the busybox image and run one workload
# in a container, showing what isolation it got and what it cost.  (The VM and compare issues
# extend this with the same workload as a VM and a side-by-side comparison.)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "isobox system info (what this host offers)"
isobox system info

step "isobox image build busybox"
isobox image build busybox

step "isobox run --rm busybox: the workload, from inside its container"
start=$(date +%s%N)
isobox run --rm --name isobox-demo --memory 64m --hostname demo busybox sh -c '
  echo "hello from $(hostname), I am PID $$"
  echo "processes I can see: $(ls /proc | grep -c "^[0-9]")"
  grep -E "^(CapEff|NoNewPrivs|Seccomp):" /proc/self/status
  echo "network interfaces: $(ls /sys/class/net)"
  mount -t tmpfs none /mnt 2>&1 | sed "s/^/mount attempt: /" || true
'
end=$(date +%s%N)
echo "whole 'isobox run --rm' took $(( (end - start) / 1000000 )) ms (CLI + daemon + container start and removal)"

step "isobox run -d, then ps, exec, logs, stop, rm"
id=$(isobox run -d --name isobox-demo-bg busybox sh -c 'i=0; while true; do echo tick $i; i=$((i+1)); sleep 1; done')
sleep 1.5
isobox ps
isobox exec isobox-demo-bg sh -c 'echo "exec sees: $(hostname), uid $(id -u)"'
isobox logs isobox-demo-bg
isobox stop -t 1 isobox-demo-bg
isobox rm isobox-demo-bg
echo "removed $id"

step "isobox compare: the same workload natively, as a container, a gVisor sandbox and a VM"
# Two repetitions keep this step near a minute and a half here (a VM under TCG boots in ~10 s);
# the HTML report has the charts.
isobox compare -n 2 --html /tmp/isobox-compare.html busybox -- sh -c 'echo "hello from $(hostname)"'
echo "HTML report with charts: /tmp/isobox-compare.html"
isobox advise --untrusted --start-budget 1000
