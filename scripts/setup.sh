#!/bin/bash
# Idempotent set-up of a Debian 12 host for isobox (run as root): Debian packages with apt-get,
# Python packages into ./.venv.  Safe to run again: it only does what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
    echo "isobox setup: run as root (isobox creates namespaces, cgroups and mounts)" >&2
    exit 1
fi

DEBIAN_PACKAGES=(
    python3 python3-venv python3-dev gcc       # the virtualenv's interpreter (Debian's starts fastest)
    libseccomp2                                # the container level's default seccomp profile
    busybox-static                             # the busybox image
    mmdebstrap                                 # debian:bookworm/trixie images (image build debian:...)
    e2fsprogs erofs-utils                      # VM root disks (images and VM issues)
    qemu-system-x86 qemu-utils ovmf            # the VM isolation level (ovmf: --firmware uefi)
    lz4 zstd                                   #   unpacking the guest kernel for a PVH boot
    syslinux syslinux-common syslinux-efi      # image build debian:SUITE --bootable: BIOS and UEFI loaders,
    mtools dosfstools fdisk                    #   its FAT boot partition and its MBR, made without mounting
    runc runsc podman catatonit uidmap         # peers (benchmarks, interop) and the gVisor level
    nftables dnsmasq-base                      # networks: isobox's nft table, each network's DNS
    procps psmisc util-linux iproute2          # ps/pkill/nsenter/ip used by tests
)

missing=()
for pkg in "${DEBIAN_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "isobox setup: installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Debian's /usr/bin/python3 starts in ~8 ms against ~50 ms for a pyenv shim: every CLI call pays it.
if [ ! -x .venv/bin/python ]; then
    /usr/bin/python3 -m venv .venv
fi
stamp=".venv/.isobox-installed"
want="$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "isobox setup: installing Python packages into .venv"
    .venv/bin/pip install -q --upgrade pip
    # compat mode: a plain .pth path entry; the default editable finder adds ~22 ms to every start.
    # Pinned (constraints.txt): a clean machine gets the versions the suite passed with, not
    # whatever was released since (a new ruff or mypy rule, a changed test client).
    .venv/bin/pip install -q -c constraints.txt -e '.[dev]' --config-settings editable_mode=compat
    echo "$want" > "$stamp"
fi

# build_c SOURCE NAME GCC-FLAGS...: .venv/libexec/NAME, rebuilt when SOURCE is newer.
build_c() {
    local src=$1 bin=.venv/libexec/$2
    shift 2
    if [ ! -x "$bin" ] || [ "$src" -nt "$bin" ]; then
        mkdir -p .venv/libexec
        gcc "$@" -Wall -Wextra -Werror -o "$bin.tmp" "$src"
        mv "$bin.tmp" "$bin"
    fi
}
# The C half of the container monitor: long-running workloads are left to it, ~0.2 MiB each
# instead of a Python process's ~2.3 MiB.
build_c isobox/runtimes/container/pump.c isobox-pump -O2
# --init's PID 1, static: it runs inside the image.
build_c isobox/runtimes/container/init.c isobox-init -static -Os -s

# isobox-runtime's launcher, in place of the console script pip writes: engines run it several
# times per container (create, start, state, kill, delete), so it starts the interpreter with
# -I -S (no site module: no .pth files, no site-packages scan; ~8 ms less per call), turns the
# cycle collector off before the first import (a process of a few ms only pays for its passes)
# and puts only isobox's own directory after the standard library on sys.path (isobox.oci imports
# nothing else); cli.entry exits without the interpreter's finalization.
launcher=.venv/bin/isobox-runtime
isobox_dir="$(.venv/bin/python -c 'import isobox, os; print(repr(os.path.dirname(os.path.dirname(os.path.abspath(isobox.__file__)))))')"
cat > "$launcher.tmp" <<EOF
#!$(pwd)/.venv/bin/python3 -IS
# Written by scripts/setup.sh (see there).
import gc
import sys

gc.disable()
sys.path.append($isobox_dir)
from isobox.oci.cli import entry

entry()
EOF
chmod 755 "$launcher.tmp"
if cmp -s "$launcher.tmp" "$launcher"; then rm "$launcher.tmp"; else mv "$launcher.tmp" "$launcher"; fi

# The VM level's guest kernel (Debian's linux-image-cloud-amd64) and qemu-guest-agent: fetched with
# apt-get download into /var/cache/isobox/vm (never installed on the host) and the initramfs built;
# idempotent, and isobox does the same on first use if this step was skipped.
.venv/bin/python -c "from isobox.runtimes.vm import guest; guest.boot_files()" \
    || echo "isobox setup: warning: could not prepare the VM guest kernel (VMs will try again on first use)" >&2
