#!/usr/bin/env bash
# install.sh — install (or remove) pybridge on this host. Idempotent: run it again to upgrade.
#
#   sudo ./install.sh                 check prerequisites, install, start `cni-bridge serve`
#   sudo ./install.sh --uninstall     stop the driver and remove everything install.sh added
#   sudo ./install.sh --uninstall --purge   ... and the lease store, driver state and log
#   ./install.sh --check              only check the prerequisites
#   ./install.sh --help
#
# What it does:
#   1. checks: root; kernel support for bridge, veth, network namespaces and nf_tables (each
#      tried in a throw-away namespace); the nft and ip tools; Python >= 3.11 with venv.
#   2. creates a virtualenv ($PYBRIDGE_VENV) from the real interpreter, the distribution's first
#      (statically linked: it starts faster on every plugin exec; a pyenv shim is resolved
#      to the file it runs: a shim costs ~100 ms per plugin exec) and installs this package into
#      it with the dependency ranges pinned in pyproject.toml.
#   3. writes `pybridge` and `pybridge-ipam` into $CNI_BIN_DIR: lean launchers whose shebang is
#      the venv's interpreter (python -m cni_bridge.fastpath.launcher); links the `cni-bridge`
#      command into $PYBRIDGE_CLI_DIR (a file of that name that is not our link is left alone).
#   4. installs plugin-spec/examples/bridge.conflist as $CNI_CONF_DIR/90-pybridge.conflist unless
#      a file of that name exists (a user's file is never overwritten, and removed on uninstall
#      only if it is still exactly what was installed).
#   5. starts `cni-bridge serve` (the Docker network + IPAM driver on
#      $DOCKER_PLUGIN_DIR/pybridge.sock; dockerd discovers it by that socket): a systemd unit
#      when systemd is PID 1, otherwise a supervisor loop (restarts serve 1 s after it exits,
#      backing off to 30 s while it keeps failing at start-up)
#      with pid file $PYBRIDGE_RUN_DIR/serve.pid and log $PYBRIDGE_LOG.
#
# Settings (environment; defaults in brackets):
#   PYBRIDGE_VENV [/opt/cni-bridge]        PYBRIDGE_PYTHON [/usr/bin/python3 if >= 3.11, else the newest found]
#   CNI_BIN_DIR [/opt/cni/bin]             CNI_CONF_DIR [/etc/cni/net.d]
#   PYBRIDGE_CLI_DIR [/usr/local/bin]      (where the `cni-bridge` command is linked)
#   PYBRIDGE_STATE_DIR [/var/lib/cni-bridge]  (Docker driver state in $PYBRIDGE_STATE_DIR/docker)
#   PYBRIDGE_IPAM_DIR [/var/lib/cni/pybridge] PYBRIDGE_RUN_DIR [/run/cni-bridge]
#   PYBRIDGE_LOG [/var/log/cni-bridge.log] DOCKER_PLUGIN_DIR [/run/docker/plugins]
#   DOCKER_SPEC_DIR [empty: no spec file; e.g. /etc/docker/plugins installs pybridge.json there]
#   SYSTEMD_UNIT_DIR [/etc/systemd/system] PYBRIDGE_NO_START [0; 1: install only, start nothing]
#   PYBRIDGE_SERVICE [auto | systemd | supervise]  PYBRIDGE_SERVE_ARGS [extra serve arguments]
#   PYBRIDGE_SKIP_CHECKS [0; 1: skip the kernel checks, e.g. inside a build container]
#   PIP_* variables are passed to pip (index, proxy, find-links).
#
# Exit codes: 0 done, 1 a step failed, 2 bad usage, 3 prerequisites missing.
set -euo pipefail

SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
VENV=${PYBRIDGE_VENV:-/opt/cni-bridge}
BIN_DIR=${CNI_BIN_DIR:-/opt/cni/bin}
CLI_DIR=${PYBRIDGE_CLI_DIR:-/usr/local/bin}
CONF_DIR=${CNI_CONF_DIR:-/etc/cni/net.d}
STATE_DIR=${PYBRIDGE_STATE_DIR:-/var/lib/cni-bridge}
IPAM_DIR=${PYBRIDGE_IPAM_DIR:-/var/lib/cni/pybridge}
RUN_DIR=${PYBRIDGE_RUN_DIR:-/run/cni-bridge}
LOG=${PYBRIDGE_LOG:-/var/log/cni-bridge.log}
PLUGIN_DIR=${DOCKER_PLUGIN_DIR:-/run/docker/plugins}
SPEC_DIR=${DOCKER_SPEC_DIR:-}
UNIT_DIR=${SYSTEMD_UNIT_DIR:-/etc/systemd/system}
NO_START=${PYBRIDGE_NO_START:-0}
SERVICE=${PYBRIDGE_SERVICE:-auto}
SKIP_CHECKS=${PYBRIDGE_SKIP_CHECKS:-0}
SERVE_ARGS=${PYBRIDGE_SERVE_ARGS:-}

UNIT_NAME=cni-bridge.service
CONFLIST_NAME=90-pybridge.conflist
PIDFILE=$RUN_DIR/serve.pid
SOCKET=$PLUGIN_DIR/pybridge.sock
# The manifest lists what this script created, so --uninstall removes exactly that.
MANIFEST=$STATE_DIR/install.manifest

say() { echo "install.sh: $*"; }
warn() { echo "install.sh: WARNING: $*" >&2; }
die() { echo "install.sh: ERROR: $1" >&2; exit "${2:-1}"; }
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

# --- prerequisites ----------------------------------------------------------------------------
find_python() {
  local cand real
  # The distribution's interpreter first: it is linked statically (no libpython.so) and starts
  # 1.3-3 ms faster than a pyenv or other shared build, and every exec'd CNI call pays that.
  for cand in ${PYBRIDGE_PYTHON:-} /usr/bin/python3 python3.13 python3.12 python3.11 python3; do
    [ -n "$cand" ] || continue
    command -v "$cand" >/dev/null 2>&1 || continue
    # Ask the interpreter for its own file: resolves pyenv shims and symlinks alike.
    real=$("$cand" -c 'import os, sys; assert sys.version_info >= (3, 11); print(os.path.realpath(sys.executable))' 2>/dev/null) || continue
    [ -x "$real" ] || continue
    "$real" -c 'import venv, ensurepip' 2>/dev/null || { MISSING_VENV=$real; continue; }
    echo "$real"
    return 0
  done
  return 1
}

kernel_check() {  # name, command run inside a new, private network namespace
  local what=$1; shift
  if ! unshare --net -- sh -c "$*" >/dev/null 2>&1; then
    MISSING+=("$what")
  fi
}

check_prereqs() {
  MISSING=()
  [ "$(id -u)" = 0 ] || MISSING+=("root (run with sudo)")
  for tool in ip nft unshare; do
    command -v "$tool" >/dev/null 2>&1 || case $tool in
      ip) MISSING+=("the ip tool (apt-get install iproute2)") ;;
      nft) MISSING+=("the nft tool (apt-get install nftables)") ;;
      unshare) MISSING+=("unshare (apt-get install util-linux)") ;;
    esac
  done
  if [ "$SKIP_CHECKS" != 1 ] && [ "$(id -u)" = 0 ] && command -v unshare >/dev/null && command -v ip >/dev/null; then
    kernel_check "kernel: network namespaces (CONFIG_NET_NS)" true
    kernel_check "kernel: Linux bridge (CONFIG_BRIDGE / module bridge)" ip link add pbchk0 type bridge
    kernel_check "kernel: veth pairs (CONFIG_VETH / module veth)" ip link add pbchk1 type veth peer name pbchk2
    if command -v nft >/dev/null; then
      kernel_check "kernel: nf_tables with NAT/masquerade (CONFIG_NF_TABLES, CONFIG_NFT_MASQ)" \
        "nft 'add table inet pbchk; add chain inet pbchk p { type nat hook postrouting priority srcnat; }; add rule inet pbchk p masquerade'"
    fi
  fi
  MISSING_VENV=""
  PYTHON=$(find_python) || PYTHON=""
  if [ -z "$PYTHON" ]; then
    if [ -n "$MISSING_VENV" ]; then
      MISSING+=("the venv module for $MISSING_VENV (apt-get install python3-venv)")
    else
      MISSING+=("Python >= 3.11 (apt-get install python3 python3-venv, or set PYBRIDGE_PYTHON)")
    fi
  fi
  if [ ${#MISSING[@]} -gt 0 ]; then
    echo "install.sh: missing prerequisites:" >&2
    printf '  - %s\n' "${MISSING[@]}" >&2
    exit 3
  fi
  say "prerequisites ok (python $PYTHON)"
}

# --- helpers ------------------------------------------------------------------------------------
record() { mkdir -p "$(dirname "$MANIFEST")"; grep -qxF "$1" "$MANIFEST" 2>/dev/null || echo "$1" >>"$MANIFEST"; }

make_dir() {  # mkdir -p, remembering each directory it creates (uninstall removes them if empty)
  local d=$1 missing=()
  while [ ! -d "$d" ]; do missing+=("$d"); d=$(dirname "$d"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  mkdir -p "$1"
  for d in "${missing[@]}"; do record "rmdir $d"; done
}

is_venv() { [ -f "$1/pyvenv.cfg" ]; }  # never rm -rf a directory that is not a virtualenv

have_systemd() { [ -d /run/systemd/system ] && [ "$(ps -p 1 -o comm= 2>/dev/null)" = systemd ]; }

service_kind() {
  case $SERVICE in
    systemd|supervise) echo "$SERVICE" ;;
    auto) if have_systemd; then echo systemd; else echo supervise; fi ;;
    *) die "PYBRIDGE_SERVICE must be auto, systemd or supervise" 2 ;;
  esac
}

serve_command() {
  echo "$VENV/bin/cni-bridge serve --socket $SOCKET --state-dir $STATE_DIR/docker --ipam-data-dir $IPAM_DIR $SERVE_ARGS"
}

# --- install steps --------------------------------------------------------------------------------
install_venv() {
  local venv_py=$VENV/bin/python
  # Refuse before anything else: $VENV may be a mistyped PYBRIDGE_VENV (/usr, /opt) that also
  # has a bin/python, and the branch below removes the whole directory.
  [ -e "$VENV" ] && ! is_venv "$VENV" && die "$VENV exists and is not a virtualenv (no pyvenv.cfg); set PYBRIDGE_VENV"
  if [ -x "$venv_py" ] && [ "$("$venv_py" -c 'import os, sys; print(os.path.realpath(sys.executable))' 2>/dev/null)" != "$PYTHON" ]; then
    say "virtualenv $VENV uses another interpreter: recreating it"
    rm -rf "$VENV"
  fi
  if [ ! -x "$venv_py" ]; then
    say "creating virtualenv $VENV"
    make_dir "$(dirname "$VENV")"
    "$PYTHON" -m venv "$VENV" || die "python -m venv $VENV failed"
  fi
  record "dir $VENV"
  say "installing pybridge into $VENV (dependency ranges from pyproject.toml)"
  # A plain (not editable) install: the venv keeps working when this checkout moves or goes.
  # The build happens in a temporary copy so the source tree stays clean (no build/, egg-info).
  local build
  build=$(mktemp -d)
  tar -C "$SRC" --exclude=./.venv --exclude=./.git --exclude=./build --exclude='*.egg-info' \
      --exclude=__pycache__ --exclude=./tests -cf - . | tar -C "$build" -xf -
  # Dependencies first (kept when already within range), then pybridge itself, always replaced
  # (the version number does not change between checkouts).
  if ! "$venv_py" -m pip install -q --disable-pip-version-check --no-warn-script-location "$build" \
     || ! "$venv_py" -m pip install -q --disable-pip-version-check --no-warn-script-location \
            --force-reinstall --no-deps "$build"; then
    rm -rf "$build"
    die "pip install failed (is a package index or mirror reachable? PIP_INDEX_URL / PIP_FIND_LINKS)"
  fi
  rm -rf "$build"
  "$venv_py" -c 'import cni_bridge, pyroute2, flask, gunicorn' || die "the installed package does not import"
}

install_launchers() {
  make_dir "$BIN_DIR"
  local f
  for f in pybridge pybridge-ipam; do
    if [ -e "$BIN_DIR/$f" ] && ! grep -q 'pybridge CNI launcher' "$BIN_DIR/$f" 2>/dev/null; then
      warn "$BIN_DIR/$f exists and is not a pybridge launcher: replacing it"
    fi
  done
  "$VENV/bin/python" -m cni_bridge.fastpath.launcher "$BIN_DIR" --python "$VENV/bin/python" >/dev/null \
    || die "writing the launchers into $BIN_DIR failed"
  record "file $BIN_DIR/pybridge"
  record "file $BIN_DIR/pybridge-ipam"
  local version
  version=$(echo '{"cniVersion":"1.0.0"}' | CNI_COMMAND=VERSION "$BIN_DIR/pybridge" 2>/dev/null | tr -d ' \n') \
    || die "$BIN_DIR/pybridge does not answer VERSION"
  say "CNI plugins in $BIN_DIR (VERSION: $version)"
}

install_cli_link() {
  # `cni-bridge` on PATH. Only a symlink into this venv is ever replaced or removed.
  local link=$CLI_DIR/cni-bridge target=$VENV/bin/cni-bridge
  make_dir "$CLI_DIR"
  if [ -e "$link" ] || [ -L "$link" ]; then
    if [ "$(readlink "$link" 2>/dev/null)" != "$target" ]; then
      warn "$link exists and is not a link to $target: leaving it (cni-bridge is $target)"
      return 0
    fi
  else
    ln -s "$target" "$link"
  fi
  record "link $link $target"
  say "cni-bridge command: $link -> $target"
}

install_conflist() {
  local src=$SRC/plugin-spec/examples/bridge.conflist dst=$CONF_DIR/$CONFLIST_NAME
  make_dir "$CONF_DIR"
  if [ -e "$dst" ]; then
    if cmp -s "$src" "$dst"; then
      say "example network config $dst is in place"
    else
      say "leaving $dst alone (it is not the file install.sh wrote)"
      return
    fi
  else
    cp "$src" "$dst.tmp.$$" && chmod 0644 "$dst.tmp.$$" && mv "$dst.tmp.$$" "$dst"
    say "example network config: $dst (network \"pybridge\", bridge pybr0, 10.89.0.0/24)"
  fi
  record "conf $dst $(sha256sum "$dst" | cut -d' ' -f1)"
}

install_spec() {
  [ -n "$SPEC_DIR" ] || return 0
  make_dir "$SPEC_DIR"
  printf '{\n  "Name": "pybridge",\n  "Addr": "unix://%s"\n}\n' "$SOCKET" >"$SPEC_DIR/pybridge.json"
  record "file $SPEC_DIR/pybridge.json"
  say "Docker plugin spec $SPEC_DIR/pybridge.json"
}

write_supervisor() {
  # The supervisor: runs serve, restarts it 1 s after any exit, forwards SIGTERM and stops.
  cat >"$VENV/bin/cni-bridge-supervise" <<EOF
#!/usr/bin/env bash
# Written by install.sh: keeps \`cni-bridge serve\` running. Restarts it 1 s after it exits; if it
# keeps dying within 30 s of starting, the pause doubles up to 30 s (no busy loop, no log flood).
# SIGTERM/SIGINT stop serve and this loop. Log: $LOG
child=
stop() { [ -n "\$child" ] && kill -TERM "\$child" 2>/dev/null; wait "\$child" 2>/dev/null; exit 0; }
trap stop TERM INT
delay=1
while :; do
  started=\$SECONDS
  $(serve_command) >>"$LOG" 2>&1 &
  child=\$!
  wait "\$child"
  rc=\$?
  if [ \$((SECONDS - started)) -ge 30 ]; then delay=1; fi
  echo "\$(date -u +%Y-%m-%dT%H:%M:%SZ) cni-bridge-supervise: serve exited with status \$rc; restarting in \$delay s" >>"$LOG"
  sleep "\$delay" & wait \$!
  delay=\$(( delay * 2 > 30 ? 30 : delay * 2 ))
done
EOF
  chmod 0755 "$VENV/bin/cni-bridge-supervise"
}

supervisor_pid() {  # the pid in the pid file if that process is our supervisor
  local pid
  pid=$(cat "$PIDFILE" 2>/dev/null) || return 1
  [ -n "$pid" ] && grep -qa cni-bridge-supervise "/proc/$pid/cmdline" 2>/dev/null && echo "$pid"
}

stop_supervised() {
  local pid i
  pid=$(supervisor_pid) || { rm -f "$PIDFILE"; return 0; }
  say "stopping cni-bridge serve (supervisor pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
  rm -f "$PIDFILE"
}

start_serve() {
  [ "$NO_START" = 1 ] && { say "not starting cni-bridge serve (PYBRIDGE_NO_START=1)"; return; }
  local d
  for d in "$RUN_DIR" "$PLUGIN_DIR" "$STATE_DIR/docker" "$IPAM_DIR" "$(dirname "$LOG")"; do make_dir "$d"; done
  case $(service_kind) in
    systemd)
      cat >"$UNIT_DIR/$UNIT_NAME.tmp" <<EOF
[Unit]
Description=pybridge Docker network and IPAM driver (cni-bridge serve)
Documentation=file://$SRC/README.md
Before=docker.service
After=network.target

[Service]
Environment=PYBRIDGE_RUN_DIR=$RUN_DIR
ExecStart=$(serve_command)
Restart=always
RestartSec=1
KillMode=mixed

[Install]
WantedBy=multi-user.target
EOF
      mv "$UNIT_DIR/$UNIT_NAME.tmp" "$UNIT_DIR/$UNIT_NAME"
      record "unit $UNIT_DIR/$UNIT_NAME"
      systemctl daemon-reload
      systemctl enable "$UNIT_NAME" >/dev/null 2>&1 || true
      systemctl restart "$UNIT_NAME"
      say "cni-bridge serve runs as systemd unit $UNIT_NAME (journalctl -u $UNIT_NAME)"
      ;;
    supervise)
      write_supervisor
      stop_supervised
      touch "$LOG"
      record "file $LOG"
      PYBRIDGE_RUN_DIR=$RUN_DIR setsid "$VENV/bin/cni-bridge-supervise" </dev/null >>"$LOG" 2>&1 &
      echo $! >"$PIDFILE"
      record "file $PIDFILE"
      local i
      for i in $(seq 1 150); do
        [ -S "$SOCKET" ] && break
        sleep 0.2
      done
      [ -S "$SOCKET" ] || { tail -n 20 "$LOG" >&2; die "cni-bridge serve did not create $SOCKET within 30 s (log: $LOG)"; }
      say "cni-bridge serve runs supervised (pid file $PIDFILE, log $LOG, socket $SOCKET)"
      ;;
  esac
}

do_install() {
  check_prereqs
  install_venv
  install_launchers
  install_cli_link
  install_conflist
  install_spec
  start_serve
  say "done. Try: docker network create -d pybridge --ipam-driver pybridge net1; cni-bridge status"
}

# --- uninstall ------------------------------------------------------------------------------------
do_uninstall() {
  local purge=$1 kind path sum
  [ "$(id -u)" = 0 ] || die "--uninstall needs root" 3
  if [ ! -f "$MANIFEST" ] && [ -e "$VENV" ] && ! is_venv "$VENV"; then  # checked before anything is stopped
    die "$VENV is not a virtualenv (no pyvenv.cfg): not removing it; set PYBRIDGE_VENV"
  fi
  if [ -f "$UNIT_DIR/$UNIT_NAME" ] && command -v systemctl >/dev/null && have_systemd; then
    systemctl disable --now "$UNIT_NAME" >/dev/null 2>&1 || true
  fi
  stop_supervised
  if [ -f "$MANIFEST" ]; then
    while read -r kind path sum; do
      case $kind in
        file) rm -f "$path" ;;
        link) [ -L "$path" ] && [ "$(readlink "$path")" = "$sum" ] && rm -f "$path" ;;
        unit) rm -f "$path"; command -v systemctl >/dev/null && have_systemd && systemctl daemon-reload || true ;;
        conf)
          if [ -f "$path" ] && [ "$(sha256sum "$path" | cut -d' ' -f1)" = "$sum" ]; then
            rm -f "$path"
          elif [ -e "$path" ]; then
            say "keeping $path (changed since install)"
          fi ;;
        dir|rmdir) ;;  # below, after the files
      esac
    done <"$MANIFEST"
    while read -r kind path sum; do
      if [ "$kind" = dir ] && [ -n "$path" ] && [ "$path" != / ] && [ -e "$path" ]; then
        if is_venv "$path"; then rm -rf "$path"; else warn "not removing $path: not a virtualenv (no pyvenv.cfg)"; fi
      fi
    done <"$MANIFEST"
    DIRS_MADE=$(awk '$1 == "rmdir" {print $2}' "$MANIFEST" | sort -r)
    rm -f "$MANIFEST"
  else
    say "no install manifest ($MANIFEST): removing the default locations"
    rm -rf "$VENV"
    [ -L "$CLI_DIR/cni-bridge" ] && [ "$(readlink "$CLI_DIR/cni-bridge")" = "$VENV/bin/cni-bridge" ] \
      && rm -f "$CLI_DIR/cni-bridge"
    for f in pybridge pybridge-ipam; do
      grep -qs 'pybridge CNI launcher' "$BIN_DIR/$f" && rm -f "$BIN_DIR/$f"
    done
  fi
  [ -S "$SOCKET" ] && rm -f "$SOCKET"
  if [ "$purge" = 1 ]; then
    say "purging lease store $IPAM_DIR, driver state $STATE_DIR, log $LOG"
    rm -rf "$IPAM_DIR" "$STATE_DIR" "$LOG" "$RUN_DIR"
  else
    rmdir "$STATE_DIR" 2>/dev/null || true
    if [ -d "$IPAM_DIR" ] || [ -d "$STATE_DIR" ]; then
      say "kept the lease store $IPAM_DIR and driver state $STATE_DIR (--purge removes them)"
    fi
  fi
  local d
  for d in ${DIRS_MADE:-}; do rmdir "$d" 2>/dev/null || true; done  # deepest first; only if empty
  say "uninstalled"
}

# --- main -----------------------------------------------------------------------------------------
ACTION=install PURGE=0
while [ $# -gt 0 ]; do
  case $1 in
    --uninstall) ACTION=uninstall ;;
    --purge) PURGE=1 ;;
    --check) ACTION=check ;;
    -h|--help) usage; exit 0 ;;
    *) echo "install.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done
case $ACTION in
  install) do_install ;;
  uninstall) do_uninstall "$PURGE" ;;
  check) check_prereqs ;;
esac
