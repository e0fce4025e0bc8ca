'''The guest's /init: a busybox sh script, so that the initramfs needs nothing but busybox.

It loads the virtio modules, finds the root and spec disks by their virtio serial, mounts the
image's root disk (an ext4 base with a per-VM qcow2 overlay, so it is writable here), mounts
volumes (virtio-fs), starts qemu-ga for exec/cp/shutdown, then runs the workload through
``isobox-run`` (``guestrun.c``: chroot, user, environment, working directory), its stdio on
virtio-serial ports the host monitor reads.  The exit code goes back on the ``exit`` port; signals come in on ``signal``.
With ``-t`` the workload's ``isobox-run --pty`` is a pty relay (see ``ptyproto.py``): it finds its
own port by name, and its own stdio carry only its errors.

Host <-> guest contract (see ``qemu.py``):
    disk serial  isobox-root  the root disk      isobox-spec  the spec (a sh script ending "#END")
    ports        stdin stdout stderr exit signal [pty] org.qemu.guest_agent.0; exec -t's hot-plugged
    console      ttyS0: kernel and init messages; "isobox-init: <stage>" lines mark progress;
                 then a shell (``isobox console``)
'''

INIT_SCRIPT = r'''#!/bin/sh
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
say() { echo "isobox-init: $*" > /dev/console; }
fail() { say "error: $*"; echo "error $*" > /dev/port-exit 2>/dev/null; sync; poweroff -f; reboot -f; }
for m in virtio_ring virtio virtio_mmio virtio_blk virtio_console; do
    [ -f /lib/modules/$m.ko ] && insmod /lib/modules/$m.ko 2>/dev/null
done
disk() {
    for s in /sys/block/vd*/serial; do
        [ "$(cat $s 2>/dev/null)" = "$1" ] && { d=${s%/serial}; echo /dev/${d##*/}; return 0; }
    done
    return 1
}
n=0
while :; do
    # The agent's port is the last on QEMU's command line: once it is linked, all the others are.
    ROOT=$(disk isobox-root) && SPEC=$(disk isobox-spec) && [ -e /dev/port-exit ] \
        && [ -e /dev/port-org.qemu.guest_agent.0 ] && break
    for p in /sys/class/virtio-ports/*; do  # no command substitution: a fork is dear under TCG
        read -r name 2>/dev/null < $p/name && [ -n "$name" ] && [ ! -L /dev/port-$name ] \
            && ln -s /dev/${p##*/} /dev/port-$name
    done
    n=$((n+1)); [ $n -gt 2000 ] && { say "error: devices did not appear"; poweroff -f; }
    usleep 5000
done
sed '/^#END$/q' $SPEC > /spec.sh
. /spec.sh
mount -t ext4 -o rw $ROOT /newroot || fail "cannot mount the root disk"
mkdir -p /newroot/proc /newroot/sys /newroot/dev /newroot/tmp
mount -t proc proc /newroot/proc
mount -t sysfs sys /newroot/sys
mount -t devtmpfs dev /newroot/dev
mkdir -p /newroot/dev/pts /newroot/dev/shm
mount -t devpts -o newinstance,ptmxmode=0666 devpts /newroot/dev/pts
mount -t tmpfs -o nosuid,nodev shm /newroot/dev/shm
hostname "$ISOBOX_HOSTNAME"
echo "$ISOBOX_HOSTNAME" > /proc/sys/kernel/hostname
ip link set lo up 2>/dev/null
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
if [ "$ISOBOX_STDIN" = 1 ]; then in=/dev/port-stdin; else in=/dev/null; fi
"$@" < $in > /dev/port-stdout 2> /dev/port-stderr &
pid=$!
# Off the workload's critical path: the guest agent (exec, cp) and, for `isobox console`, a root
# shell of the VM (outside the image's root) on the serial console.
if [ -x /usr/sbin/qemu-ga ] && [ -e /dev/port-org.qemu.guest_agent.0 ]; then
    mkdir -p /run/qga
    # In the background at nice 19 (isobox-run restores 0 for what it execs): its start-up, ~0.4 s
    # of CPU under TCG, neither delays the workload nor the exit report of a short one.
    sh -c 'renice -n 19 -p $$ >/dev/null; exec /usr/sbin/qemu-ga -m virtio-serial \
        -p /dev/port-org.qemu.guest_agent.0 -t /run/qga' 2>/dev/console &
fi
setsid cttyhack sh -c 'while :; do sh; done' < /dev/console > /dev/console 2>&1 &
while read -r sig; do kill -s "$sig" $pid 2>/dev/null; done < /dev/port-signal &
wait $pid
code=$?
echo "exit $code" > /dev/port-exit
sync
poweroff -f
reboot -f
'''
