'''The guest's /init, in two stages, so that the initramfs needs nothing but busybox and isobox-run.

``/init`` is ``isobox-run`` entered as PID 1 (``guestboot.c``): it loads the virtio modules, finds
the root and spec disks by their virtio serial, links the ports by name, and mounts the image's
root disk (an ext4 base with a per-VM qcow2 overlay, so it is writable here), and starts qemu-ga
for exec/cp/shutdown from the tools disk at nice 19 — in C, because each fork of busybox costs
10-20 ms of guest CPU under TCG.  It then execs ``/init.sh`` (below), a busybox sh script, which
sources the spec, configures the network, mounts volumes (virtio-fs), and runs the workload
through ``isobox-run`` (``guestrun.c``:
chroot, user, environment, working directory), its stdio on virtio-serial ports the host monitor
reads.  ``isobox-run --relay io`` (``--pty io`` with ``-t``) relays the workload's stdio, the
host's signals and the exit code over the one ``io`` port (see ``relay.py``).

Host <-> guest contract (see ``qemu.py``):
    disk serial  isobox-root  the root disk      isobox-spec  the spec (a sh script ending "#END")
                 isobox-tools qemu-ga and its libraries (read-only ext4, mounted at /tools)
    ports        io org.qemu.guest_agent.0; exec -t's hot-plugged
    console      ttyS0: kernel and init messages; "isobox-init: <stage>" lines mark progress;
                 then a shell (``isobox console``)
'''

INIT_SCRIPT = r'''#!/bin/sh
# Entered from guestboot.c with /proc, /sys, /dev, the ports, /spec.sh and /newroot in place.
say() { echo "isobox-init: $*" > /dev/console; }
# The monitor takes an "isobox-init: error: " line for the run's error (exit 125).
fail() { say "error: $*"; sync; poweroff -f; reboot -f; }
. /spec.sh
echo "$ISOBOX_HOSTNAME" > /proc/sys/kernel/hostname  # a builtin: no fork for `hostname`
if [ -n "$ISOBOX_NET_ADDR" ]; then
    for m in failover net_failover virtio_net; do insmod /lib/modules/$m.ko 2>/dev/null; done
    n=0
    until [ -e /sys/class/net/eth0 ]; do
        n=$((n+1)); [ $n -gt 1000 ] && fail "no network interface appeared"; usleep 5000
    done
    ip link set eth0 up && ip addr add "$ISOBOX_NET_ADDR" dev eth0 && ip route add default via "$ISOBOX_NET_GW" \
        || fail "cannot configure eth0"
    # As a container on the same network has them: the network's DNS and its own names.
    mkdir -p /newroot/etc
    printf 'nameserver %s\noptions ndots:0\n' "$ISOBOX_NET_GW" > /newroot/etc/resolv.conf
    printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n%s\t%s\n' \
        "${ISOBOX_NET_ADDR%/*}" "$ISOBOX_NET_NAMES" > /newroot/etc/hosts
fi
mount_volume() {
    mkdir -p "/newroot$2" && mount -t virtiofs -o "$3" "$1" "/newroot$2" || fail "cannot mount the volume at $2"
}
if [ -n "$ISOBOX_VOLUMES" ]; then
    insmod /lib/modules/fuse.ko 2>/dev/null
    insmod /lib/modules/virtiofs.ko 2>/dev/null
    volumes
fi
say "workload"
# The relay (isobox-run --relay/--pty io, the spec's "$@") carries the workload's stdio, signals
# and exit code; it reports the exit after a sync, and the host then ends the VM.  Its own errors
# (before the workload runs) go to the console, whose tail the host reports when no exit came.
"$@" < /dev/null > /dev/console 2>&1 &
pid=$!
# Off the workload's critical path (the first stage started the guest agent at nice 19): for
# `isobox console`, a root shell of the VM (outside the image's root) on the serial console.
# It starts at nice 19 too, so that its three execs do not compete with the workload's start,
# and gives its shells the normal priority once it runs.
isobox-run --nice 19 /bin/setsid cttyhack sh -c 'renice 0 -p $$ >/dev/null; while :; do sh; done' \
    < /dev/console > /dev/console 2>&1 &
wait $pid
poweroff -f
reboot -f
'''
