#!/usr/bin/env bash
# .ci/vm-setup.sh — install what the kernel-VM tests (tests/guest/test_boot_guest.py,
# tests/guest/kernel/) need: QEMU, Debian's full kernel (ipvlan, 8021q, dummy as
# modules), busybox/file/kmod for virtme-ng's initramfs, and virtme-ng 1.42 in a
# venv at /opt/vng (where tests/guest/run-in-vm.sh, the guest runner, looks by default;
# VM_VENV overrides it).
#
# Run as root on a Debian 12 machine, non-interactively. Idempotent: it only
# touches what is missing, and returns in well under a second when all is done.
# Knobs: VNG_VENV (default /opt/vng), VNG_PYTHON (interpreter for the venv).
set -euo pipefail

VNG_VENV=${VNG_VENV:-/opt/vng}
VNG_VERSION=1.42
APT_PKGS=(qemu-system-x86 linux-image-amd64 busybox-static file kmod iproute2 nftables python3-venv)

t0=$(date +%s)
log() { echo "vm-setup: $*"; }
die() { echo "vm-setup: ERROR: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root"
export DEBIAN_FRONTEND=noninteractive

# --- 1. Debian packages ------------------------------------------------------
missing=()
for p in "${APT_PKGS[@]}"; do
  st=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
  [ "$st" = installed ] || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "apt: installing ${missing[*]}"
  apt_opts=(-y -q -o DPkg::Lock::Timeout=600 -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)
  apt-get -q -o DPkg::Lock::Timeout=600 update >/dev/null || die "apt-get update failed"
  apt-get install "${apt_opts[@]}" "${missing[@]}" >/tmp/vm-setup-apt.log 2>&1 \
    || { tail -n 40 /tmp/vm-setup-apt.log >&2; die "apt-get install failed (log: /tmp/vm-setup-apt.log)"; }
  log "apt: done ($(( $(date +%s) - t0 )) s)"
else
  log "apt: ${APT_PKGS[*]} already installed"
fi

# --- 2. The guest kernel ------------------------------------------------------
kernel=$(ls -1v /boot/vmlinuz-* 2>/dev/null | tail -n 1 || true)
[ -n "$kernel" ] && [ -r "$kernel" ] || die "no kernel in /boot after installing linux-image-amd64"
kver=${kernel#/boot/vmlinuz-}
for m in ipvlan 8021q dummy macvlan; do
  modinfo -k "$kver" -n "$m" >/dev/null 2>&1 || die "kernel $kver has no module $m"
done
log "kernel: $kernel (modules ipvlan 8021q dummy macvlan present)"

# --- 3. virtme-ng venv -------------------------------------------------------
have=""
if [ -x "$VNG_VENV/bin/vng" ] && [ -x "$VNG_VENV/bin/python" ]; then
  have=$("$VNG_VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("virtme-ng"))' 2>/dev/null || true)
fi
if [ "$have" = "$VNG_VERSION" ]; then
  log "venv: $VNG_VENV has virtme-ng $have"
else
  # Debian's interpreter (python3-venv above): stable path, no pyenv shim.
  py=${VNG_PYTHON:-/usr/bin/python3}
  [ -x "$py" ] || py=$(command -v python3) || die "no python3"
  if [ -n "$have" ] || [ ! -x "$VNG_VENV/bin/python" ] || ! "$VNG_VENV/bin/python" -c pass 2>/dev/null; then
    log "venv: (re)creating $VNG_VENV with $py${have:+ (had virtme-ng $have)}"
    rm -rf "$VNG_VENV"
    "$py" -m venv "$VNG_VENV" || die "python venv creation failed"
  fi
  log "venv: pip install virtme-ng==$VNG_VERSION"
  "$VNG_VENV/bin/pip" install -q --no-input --disable-pip-version-check "virtme-ng==$VNG_VERSION" \
    || die "pip install virtme-ng==$VNG_VERSION failed"
  have=$("$VNG_VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("virtme-ng"))')
  [ "$have" = "$VNG_VERSION" ] || die "venv has virtme-ng $have, wanted $VNG_VERSION"
  log "venv: $VNG_VENV ready (virtme-ng $have)"
fi

# --- 4. The runner -----------------------------------------------------------
runner=$(cd "$(dirname "$0")/.." && pwd)/tests/guest/run-in-vm.sh
bash -n "$runner" || die "$runner does not parse"
[ -x "$runner" ] || chmod +x "$runner"
vm_venv=""
[ "$VNG_VENV" = /opt/vng ] || vm_venv="VM_VENV=$VNG_VENV "
log "ready in $(( $(date +%s) - t0 )) s (run the guest with ${vm_venv}tests/guest/run-in-vm.sh CMD)"
