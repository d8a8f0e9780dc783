#!/usr/bin/env bash
# plugin-spec/make-base-image.sh — everything `docker build` of the pybridge image needs, made
# without a container registry:
#
#   1. the base image (default tag pybridge-base:bookworm): a minimal Debian rootfs made with
#      debootstrap from the host's Debian mirror (python3, python3-venv, nftables, iptables,
#      iproute2), imported with `docker import`. The rootfs tarball is cached, so a second run
#      (or another dockerd) only re-imports it.
#   2. the wheelhouse build/wheels/: pybridge and its pinned dependencies as wheels, made with the
#      host's pip (and whatever index/mirror pip is configured with). The image build installs
#      from it with --no-index: no network inside `docker build`.
#
# Then:   docker build --build-arg BASE=pybridge-base:bookworm -t pybridge:latest .
#
# Usage: plugin-spec/make-base-image.sh [--base-only | --wheels-only] [--tag TAG] [--suite S]
#            [--mirror URL] [--cache FILE] [--python PY] [--rebuild]
# Environment: DOCKER_HOST (which dockerd gets the image), PYBRIDGE_BASE_CACHE (= --cache).
# Exit codes: 0 done, 1 a step failed, 2 bad usage, 3 a prerequisite is missing.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
TAG=pybridge-base:bookworm
SUITE=bookworm
MIRROR=${DEBIAN_MIRROR:-}
CACHE=${PYBRIDGE_BASE_CACHE:-/var/cache/pybridge/base-bookworm.tar}
PY=${PYBRIDGE_PYTHON:-}
DO_BASE=1 DO_WHEELS=1 REBUILD=0
PACKAGES=python3,python3-venv,nftables,iptables,iproute2,ca-certificates

die() { echo "make-base-image: $*" >&2; exit "${2:-1}"; }
log() { echo "make-base-image: $*" >&2; }
usage() { sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
  case $1 in
    --base-only) DO_WHEELS=0 ;;
    --wheels-only) DO_BASE=0 ;;
    --tag) TAG=${2:?}; shift ;;
    --suite) SUITE=${2:?}; shift ;;
    --mirror) MIRROR=${2:?}; shift ;;
    --cache) CACHE=${2:?}; shift ;;
    --python) PY=${2:?}; shift ;;
    --rebuild) REBUILD=1 ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
  esac
  shift
done

default_mirror() {
  # The mirror apt already uses on this host (deb822 or one-line sources), else deb.debian.org.
  local m
  m=$(grep -hsE '^(URIs:|deb )' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list \
        /etc/apt/sources.list 2>/dev/null | grep -v security | head -n1 \
      | sed -E 's/^URIs:[[:space:]]*//; s/^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?//' | awk '{print $1}')
  echo "${m:-http://deb.debian.org/debian}"
}

# The debootstrap target while make_rootfs_tar runs, removed on any way out (die exits the
# script). Not a RETURN trap on a local: bash keeps that trap set after the function returns
# and runs it again when the caller returns, where the local is gone ("dir: unbound variable"
# under set -u, after the cache was written).
ROOTFS_TMP=""
cleanup() { [ -z "$ROOTFS_TMP" ] || rm -rf "$ROOTFS_TMP"; }
trap cleanup EXIT

make_rootfs_tar() {
  command -v debootstrap >/dev/null || die "debootstrap is missing: apt-get install debootstrap" 3
  [ "$(id -u)" = 0 ] || die "debootstrap needs root" 3
  local dir mirror
  mirror=${MIRROR:-$(default_mirror)}
  ROOTFS_TMP=$(mktemp -d /var/tmp/pybridge-rootfs.XXXXXX)
  dir=$ROOTFS_TMP
  log "debootstrap $SUITE from $mirror (a few minutes) ..."
  debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$dir/root" "$mirror" \
    >"$dir/debootstrap.log" 2>&1 || { tail -n 30 "$dir/debootstrap.log" >&2; die "debootstrap failed"; }
  # Trim what an image never needs: package caches, docs, man pages, locales.
  rm -rf "$dir"/root/var/cache/apt/archives/*.deb "$dir"/root/var/lib/apt/lists/* \
         "$dir"/root/usr/share/doc/* "$dir"/root/usr/share/man/* "$dir"/root/usr/share/locale/*
  mkdir -p "$(dirname "$CACHE")"
  tar --numeric-owner -C "$dir/root" -cf "$CACHE.tmp" .
  mv "$CACHE.tmp" "$CACHE"
  log "rootfs cached in $CACHE ($(du -h "$CACHE" | cut -f1))"
  cleanup
  ROOTFS_TMP=""
}

make_base() {
  command -v docker >/dev/null || die "the docker CLI is missing" 3
  if [ "$REBUILD" = 0 ] && docker image inspect "$TAG" >/dev/null 2>&1; then
    log "$TAG exists (--rebuild to make it again)"
    return
  fi
  if [ "$REBUILD" = 1 ] || [ ! -s "$CACHE" ]; then
    make_rootfs_tar
  fi
  log "docker import $CACHE as $TAG"
  docker import --change 'CMD ["/bin/bash"]' "$CACHE" "$TAG" >/dev/null || die "docker import failed"
}

make_wheels() {
  local out=$REPO/build/wheels py
  py=${PY:-$(command -v python3)} || die "python3 is missing" 3
  py=$(readlink -f "$py")
  # pyenv shims resolve to a script: ask the interpreter itself.
  py=$("$py" -c 'import os, sys; print(os.path.realpath(sys.executable))')
  rm -rf "$out.tmp" && mkdir -p "$out.tmp"
  log "pip wheel $REPO -> $out"
  "$py" -m pip wheel -q --disable-pip-version-check --wheel-dir "$out.tmp" "$REPO" \
    || die "pip wheel failed (does pip reach an index or a local mirror?)"
  rm -rf "$out" && mv "$out.tmp" "$out"
  rm -rf "$REPO/build/lib" "$REPO/build/bdist."* 2>/dev/null || true
  log "$(ls "$out" | wc -l) wheels in $out"
}

[ "$DO_BASE" = 1 ] && make_base
[ "$DO_WHEELS" = 1 ] && make_wheels
exit 0
