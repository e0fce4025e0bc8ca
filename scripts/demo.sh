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

# Idempotent: a demo interrupted earlier may have left its workloads behind.
isobox rm -f isobox-demo isobox-demo-bg isobox-demo-web >/dev/null 2>&1 || true

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

step "networks: a web server, reached by name from another container and from the host through -p"
isobox run -d --name isobox-demo-web -p 80 busybox httpd -f -p 80 -h /etc >/dev/null
hostport=$(isobox port isobox-demo-web 80 | cut -d: -f2)
echo "published: $(isobox port isobox-demo-web)"
isobox run --rm busybox sh -c 'echo "from a container, by name:"; wget -qO- http://isobox-demo-web/hosts'
echo "from the host, 127.0.0.1:$hostport:"
busybox wget -qO- "http://127.0.0.1:$hostport/hosts"
isobox rm -f isobox-demo-web >/dev/null

step "isobox compare: the same workload natively, as a container, a gVisor sandbox and a VM"
# Two repetitions keep this step near a minute and a half here (a VM under TCG boots in ~10 s);
# the HTML report has the charts.
isobox compare -n 2 --html /tmp/isobox-compare.html busybox -- sh -c 'echo "hello from $(hostname)"'
echo "HTML report with charts: /tmp/isobox-compare.html"
isobox advise --untrusted --start-budget 1000
