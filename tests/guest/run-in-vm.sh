#!/usr/bin/env bash
# run-in-vm.sh CMD | PROG ARGS... : run in a throw-away QEMU VM booting Debian's
# full kernel, host / shared read-only (virtme-ng, 9p). cwd + VM_RWDIRS (':'-list)
# are shared read-write at the same path; other writes go to tmpfs overlays.
# Host's exported env is re-exported. Exit = command's (255 guest died, 124 timeout).
# Knobs: VM_KERNEL VM_VENV(/opt/vng) VM_MEM VM_CPUS VM_TIMEOUT VM_ACCEL(auto|kvm|tcg) VM_CPU VM_VERBOSE=1
#        VM_QEMU_OPTS (extra QEMU options, e.g. a NIC)
# Needs: apt qemu-system-x86 linux-image-amd64 busybox-static file kmod; pip virtme-ng==1.42 in
# VM_VENV -- `bash .ci/vm-setup.sh` (run by .ci/setup.sh) installs all of it.
# Used by tests/guest/test_boot_guest.py to run tests/guest/kernel in the guest, e.g. by hand:
#   PYBRIDGE_IN_VM=1 tests/guest/run-in-vm.sh .venv/bin/python -m pytest tests/guest/kernel -q
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: $0 'shell command' | $0 prog args..." >&2; exit 2; }
die() { echo "run-in-vm: $*" >&2; exit 2; }
VENV=${VM_VENV:-/opt/vng}   # where .ci/vm-setup.sh installs virtme-ng
VNG=$VENV/bin/vng
[ -x "$VNG" ] || die "$VNG missing (bash .ci/vm-setup.sh, or pip install virtme-ng==1.42 into $VENV)"
KERNEL=${VM_KERNEL:-$(ls -1v /boot/vmlinuz-* 2>/dev/null | tail -n 1)}
[ -r "${KERNEL:-}" ] || die "no kernel in /boot (apt-get install linux-image-amd64)"

# /dev/kvm here is kvm_pvm: stock kernels hang after "Probing EDD". Use KVM only
# with real vmx/svm, else TCG emulation.
ACCEL=${VM_ACCEL:-auto}
if [ "$ACCEL" = auto ]; then
  ACCEL=tcg
  if [ -w /dev/kvm ] && grep -qwE 'vmx|svm' /proc/cpuinfo && [ ! -d /sys/module/kvm_pvm ]; then ACCEL=kvm; fi
fi
opts=(--run "$KERNEL" --force-9p --memory "${VM_MEM:-1G}" --cpus "${VM_CPUS:-2}")
qopts=""
if [ "$ACCEL" = tcg ]; then opts+=(--disable-kvm); qopts="-cpu ${VM_CPU:-qemu64}"; fi
# Keep udev coldplug from autoloading unused drivers (~4 s under TCG);
# explicit 'modprobe NAME' still works.
opts+=(--append "modprobe.blacklist=kvm,kvm_amd,kvm_intel,ccp,ahci,libahci,libata,sr_mod,cdrom,sg,iTCO_wdt,iTCO_vendor_support,lpc_ich,i2c_i801,i2c_smbus,psmouse,pcspkr,evdev,serio_raw,intel_pmc_bxt,i6300esb,button,qemu_fw_cfg,powernow_k8,acpi_cpufreq,aesni_intel,ghash_clmulni_intel,crc32_pclmul,crct10dif_pclmul,sha1_ssse3,sha256_ssse3,sha512_ssse3,crypto_simd,cryptd")
[ "${VM_VERBOSE:-0}" = 1 ] && opts+=(--verbose)

CWD=$(pwd -P)
TMPD=$(mktemp -d /tmp/run-in-vm.XXXXXX)   # host /tmp is readable in the guest
trap 'rm -rf "$TMPD"' EXIT

# RW dirs: own virtio-9p devices mounted cache=loose (vng --rwdir is uncached,
# 2-4x slower Python imports). vng pastes --qemu-opts into sh: plain paths only.
pre=""; i=0; declare -A seen=()
IFS=: read -r -a extra <<<"${VM_RWDIRS:-}"
for d in "$CWD" "${extra[@]}"; do
  [ -n "$d" ] || continue
  d=$(cd "$d" && pwd -P) || die "no such dir: $d"
  [ "$d" != / ] || die "refusing to share / read-write"
  [[ $d =~ ^[A-Za-z0-9_./+@-]+$ ]] || die "unsupported characters in path: $d"
  [ -z "${seen[$d]:-}" ] || continue; seen[$d]=1
  qopts+=" -fsdev local,id=rw$i,path=$d,security_model=none,multidevs=remap"
  qopts+=" -device virtio-9p-pci,fsdev=rw$i,mount_tag=rw$i"
  pre+="mount -t 9p -o trans=virtio,version=9p2000.L,access=any,msize=512000,${VM_RW_9P_OPTS-cache=loose} rw$i $d || exit 125"$'\n'
  i=$((i + 1))
done
# VM_QEMU_OPTS: more QEMU options (plain words, e.g. a NIC on a host tap:
# "-netdev tap,id=n0,ifname=TAP,script=no,downscript=no -device virtio-net-pci,netdev=n0,mac=MAC").
[[ ${VM_QEMU_OPTS:-} =~ ^[A-Za-z0-9_.,=:/\ -]*$ ]] || die "unsupported characters in VM_QEMU_OPTS"
qopts+=" ${VM_QEMU_OPTS:-}"
opts+=(--qemu-opts="$qopts")

# Command goes in a file (kernel command line is capped at 2 KiB).
{
  echo '#!/bin/bash'
  echo 'trap sync EXIT'   # flush cached writes before poweroff
  printf '%s' "$pre"
  export -p | grep -vE '^declare -x (PWD|OLDPWD|SHLVL|HOSTNAME|_|TMPDIR)='
  printf 'cd %q || exit 125\n' "$CWD"
  if [ $# -eq 1 ]; then printf '%s\n' "$1"; else printf '%q ' "$@"; echo; fi
} >"$TMPD/cmd.sh"

# virtme-ng 1.42 mounts the 9p root uncached: shadow its 'virtme-run' helper to
# add cache=loose (host / must not change during the run). VM_9P_ROOT_OPTS='' = off.
mkdir "$TMPD/bin"
cat >"$TMPD/bin/virtme-run" <<PYEOF
#!$VENV/bin/python
import sys
import virtme.mkinitramfs as m
opts = "${VM_9P_ROOT_OPTS-cache=loose}"
if opts:
    m._MOUNT_ROOT_HOST = m._MOUNT_ROOT_HOST.replace("msize=524288", "msize=524288," + opts)
from virtme.commands.run import main
sys.exit(main())
PYEOF
chmod +x "$TMPD/bin/virtme-run"

run_vm() {  # vng finds 'virtme-run' via PATH; only vng sees this PATH
  PATH="$TMPD/bin:$VENV/bin:$PATH" timeout -k 10 "${VM_TIMEOUT:-900}" \
    "$VNG" "${opts[@]}" --cwd / --exec "/bin/bash $TMPD/cmd.sh" </dev/null
}
# QEMU reopens /proc/self/fd/1,2 with O_TRUNC: if stdout/stderr is a regular file
# (CI log) the streams clobber each other. Give QEMU pipes, stdout/stderr apart.
set +e
( ( run_vm 2>&1 1>&3 3>&- | cat >&2 3>&-; exit "${PIPESTATUS[0]}" ) 3>&1 | cat; exit "${PIPESTATUS[0]}" )
exit $?
