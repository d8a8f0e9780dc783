#!/usr/bin/env bash
# Installs the packages and the virtualenv the test suite needs. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
APT_PACKAGES=(iproute2 iputils-ping nftables iptables conntrack tcpdump busybox-static dnsmasq-base
              containernetworking-plugins python3-venv util-linux
              docker.io containerd runc podman debootstrap
              qemu-system-x86 linux-image-amd64 file kmod
              iperf3 etcd-server)
missing=()
for p in "${APT_PACKAGES[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
PY=${PYBRIDGE_PYTHON:-}
if [ -z "$PY" ]; then
  # a real interpreter, not a pyenv shim (a shim costs ~100 ms per exec); the distribution's
  # first: it is linked statically (no libpython.so), so it starts 1.3-3 ms faster than a
  # pyenv build, which the benchmark's exec'd plugin pays on every call
  PY=$(python3 -c 'import sys; print(sys.executable)')
  PY=$(readlink -f "$PY")
  for cand in /usr/bin/python3.11 /usr/bin/python3 /root/.pyenv/versions/3.11*/bin/python3; do
    [ -x "$cand" ] && "$cand" -c 'import sys; sys.exit(sys.version_info < (3, 11))' && { PY=$(readlink -f "$cand"); break; }
  done
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
echo "setup: python $(.venv/bin/python -V), pyroute2 $(.venv/bin/python -c 'import pyroute2; print(pyroute2.__version__)' 2>/dev/null || echo '?')"
bash .ci/vm-setup.sh
