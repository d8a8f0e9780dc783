"""A small CNI runtime driver with libcni semantics, for tests and benchmarks.

Why it exists: there is no packaged `cnitool`, and every integration test, conformance test and
benchmark must drive plugins exactly the way a runtime (podman, containerd, CRI-O via libcni)
does, so that "it works in the test" means "it works under a runtime". The behaviour mirrors
containernetworking/cni `libcni/api.go` (v1.2):

* ADD runs the plugins in list order; each gets `name` and `cniVersion` from the list, the
  previous plugin's result as `prevResult`, and `runtimeConfig` holding those capability args the
  plugin declares in its `capabilities`. The final result is cached per (network, id, ifname) in
  `<cache_dir>/results/<network>-<id>-<ifname>` in libcni's `cniCacheV1` format.
* DEL runs the plugins in reverse order with the cached result as `prevResult` (config >= 0.4.0).
  Like libcni it stops at the first failing plugin (`keep_going=True` continues and collects the
  errors, for cleanup code); the cache entry is removed only when every plugin succeeded.
* CHECK (config >= 0.4.0, unless `disableCheck`) runs in order with the cached result.
* GC (config >= 1.1.0, unless `disableGC`) first DELs cached attachments of this network that are
  not in the valid list, then sends GC with `cni.dev/valid-attachments` to every plugin.
* STATUS (config >= 1.1.0) runs each plugin until one fails. VERSION asks each plugin type.

Deliberate differences from libcni: no validation of container id / network name / ifname (tests
must be able to send bad input to the plugin), and results are passed on as the plugin printed
them (libcni re-encodes them through its typed structs, which can convert versions).

Standard library only, so benchmarks can use it without importing pytest or pyroute2.
Command line: `python -m tests.support.cnitool add|del|check|gc|status|version CONFLIST [NETNS]`.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Union

__all__ = [
    "CachedAttachment",
    "CniArgs",
    "CniCallError",
    "CniRun",
    "CniTool",
    "NetworkList",
    "PluginCall",
    "PluginNotFoundError",
    "PluginTimeoutError",
    "bridge_conflist",
    "default_cni_path",
    "load_netconf",
    "parse_cni_args",
    "version_tuple",
]

SYSTEM_CNI_DIRS = ("/opt/cni/bin", "/usr/lib/cni")
CACHE_KIND = "cniCacheV1"
# libcni's version.Current(); what it sends on stdin for VERSION.
CURRENT_SPEC_VERSION = "1.1.0"

ConfLike = Union[str, os.PathLike, Mapping[str, Any], "NetworkList"]
CniArgs = Union[None, str, Mapping[str, str], Sequence[Sequence[str]]]


def default_cni_path() -> list[str]:
    """The running interpreter's scripts dir, then /opt/cni/bin and /usr/lib/cni.

    The venv's bin comes first so tests exercise the checked-out `pybridge` / `pybridge-ipam`
    console scripts, not a stale copy someone installed into /opt/cni/bin.
    """
    dirs: list[str] = []
    scripts = sysconfig.get_path("scripts")
    if scripts:
        dirs.append(scripts)
    for d in SYSTEM_CNI_DIRS:
        if d not in dirs:
            dirs.append(d)
    return dirs


def version_tuple(v: str | None) -> tuple[int, ...]:
    """'1.0.0' -> (1, 0, 0); empty/missing means 0.1.0 as in the spec."""
    if not v:
        return (0, 1, 0)
    try:
        return tuple(int(p) for p in v.split("."))
    except ValueError:
        raise ValueError(f"invalid cniVersion {v!r}") from None


def parse_cni_args(args: CniArgs) -> list[tuple[str, str]]:
    """Normalise CNI_ARGS given as 'K=V;K2=V2', a mapping or pairs into ordered pairs."""
    if args is None:
        return []
    if isinstance(args, str):
        pairs = []
        for item in args.split(";"):
            if not item:
                continue
            key, sep, value = item.partition("=")
            if not sep:
                raise ValueError(f"CNI_ARGS item {item!r} is not K=V")
            pairs.append((key, value))
        return pairs
    if isinstance(args, Mapping):
        return [(str(k), str(v)) for k, v in args.items()]
    return [(str(k), str(v)) for k, v in args]


def _stringify_args(pairs: Sequence[tuple[str, str]]) -> str:
    return ";".join(f"{k}={v}" for k, v in pairs)


@dataclasses.dataclass(frozen=True)
class NetworkList:
    """A parsed conflist (a single .conf is wrapped as a one-plugin list, like libcni)."""

    name: str
    cni_version: str
    plugins: tuple[dict[str, Any], ...]
    raw: dict[str, Any]
    disable_check: bool = False
    disable_gc: bool = False

    @property
    def version(self) -> tuple[int, ...]:
        return version_tuple(self.cni_version)

    def to_bytes(self) -> bytes:
        return json.dumps(self.raw).encode()


def load_netconf(conf: ConfLike) -> NetworkList:
    """Load a conflist or single plugin conf from a path, a dict or a NetworkList."""
    if isinstance(conf, NetworkList):
        return conf
    if isinstance(conf, (str, os.PathLike)):
        raw = json.loads(Path(conf).read_text())
    else:
        raw = json.loads(json.dumps(dict(conf)))  # deep copy, and proves it is JSON-able
    if not isinstance(raw, dict):
        raise ValueError("network configuration must be a JSON object")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError("network configuration has no 'name'")
    if "plugins" in raw:
        plugins = raw["plugins"]
        if not isinstance(plugins, list) or not plugins:
            raise ValueError(f"conflist {name!r} has no plugins")
    else:
        plugins = [raw]  # a single .conf
    for p in plugins:
        if not isinstance(p, dict) or not isinstance(p.get("type"), str) or not p["type"]:
            raise ValueError(f"plugin in {name!r} has no 'type': {p!r}")
    return NetworkList(
        name=name,
        cni_version=str(raw.get("cniVersion", "")),
        plugins=tuple(plugins),
        raw=raw,
        disable_check=bool(raw.get("disableCheck", False)),
        disable_gc=bool(raw.get("disableGC", False)),
    )


@dataclasses.dataclass
class PluginCall:
    """One exec of one plugin: everything a failing test needs to explain itself."""

    plugin: str
    command: str
    path: str | None
    env: dict[str, str]  # the CNI_* variables only
    stdin: dict[str, Any]
    stdout: str = ""
    stderr: str = ""
    exit_code: int | None = None  # None: not run (not found) or killed by timeout
    elapsed: float = 0.0  # seconds, around the exec only
    output: Any = None  # stdout parsed as JSON, or None
    error: CniCallError | None = dataclasses.field(default=None, repr=False)  # driver-side failure

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    def summary(self) -> str:
        return (
            f"{self.plugin} {self.command} exit={self.exit_code} "
            f"{self.elapsed * 1000:.1f}ms"
        )


class CniCallError(Exception):
    """A plugin (or the driver, for a request libcni would refuse) failed.

    `error` is the parsed CNI error object (`{cniVersion, code, msg, details}`) when the plugin
    printed one; `code`/`msg`/`details` are lifted from it for convenience.
    """

    def __init__(
        self,
        message: str,
        *,
        call: PluginCall | None = None,
        error: dict[str, Any] | None = None,
    ) -> None:
        self.call = call
        self.error = error if isinstance(error, dict) else None
        self.code: int | None = self.error.get("code") if self.error else None
        self.msg: str = str(self.error.get("msg", "")) if self.error else message
        self.details: str = str(self.error.get("details", "")) if self.error else ""
        self.stderr: str = call.stderr if call else ""
        self.exit_code: int | None = call.exit_code if call else None
        super().__init__(message)

    def __str__(self) -> str:
        parts = [self.args[0]]
        if self.call is not None:
            parts.append(f"plugin={self.call.plugin} command={self.call.command} exit={self.exit_code}")
        if self.code is not None:
            parts.append(f"code={self.code} msg={self.msg!r}")
        if self.details:
            parts.append(f"details={self.details!r}")
        if self.call is not None and self.call.stdout and self.error is None:
            parts.append(f"stdout={self.call.stdout[-1000:]!r}")
        if self.stderr:
            parts.append(f"stderr={self.stderr[-2000:]!r}")
        return "; ".join(parts)


class PluginNotFoundError(CniCallError):
    """The plugin `type` is not an executable in any CNI_PATH directory."""


class PluginTimeoutError(CniCallError):
    """The plugin did not finish within the driver's timeout and was killed."""


@dataclasses.dataclass
class CniRun:
    """The outcome of one runtime-level operation (ADD of a whole list, DEL, ...)."""

    command: str
    network: str
    container_id: str = ""
    ifname: str = ""
    calls: list[PluginCall] = dataclasses.field(default_factory=list)
    result: Any = None  # ADD: the final result; VERSION: list of outputs
    errors: list[CniCallError] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def error(self) -> CniCallError | None:
        return self.errors[0] if self.errors else None

    @property
    def elapsed(self) -> float:
        return sum(c.elapsed for c in self.calls)

    def raise_for_error(self) -> CniRun:
        if self.errors:
            raise self.errors[0]
        return self


@dataclasses.dataclass(frozen=True)
class CachedAttachment:
    """One libcni cache entry (results/<network>-<id>-<ifname>)."""

    path: Path
    network: str
    container_id: str
    ifname: str
    netns: str
    config: bytes
    cni_args: list[tuple[str, str]]
    capability_args: dict[str, Any]
    result: dict[str, Any] | None


class CniTool:
    """Runs network configurations the way a libcni-based runtime does.

    `cache_dir` plays the role of libcni's /var/lib/cni (results go in `<cache_dir>/results`).
    `data_dir` is not used by the driver: fixtures hang the test's IPAM dataDir here.
    """

    def __init__(
        self,
        cache_dir: str | os.PathLike,
        path: str | Sequence[str] | None = None,
        *,
        timeout: float = 120.0,
        env: Mapping[str, str] | None = None,
        data_dir: str | os.PathLike | None = None,
        wrapper: Sequence[str] = (),
    ) -> None:
        """`wrapper`: a command the plugin runs under, e.g. `ip netns exec HOST` to make a test
        namespace the plugin's host."""
        self.cache_dir = Path(cache_dir)
        self.wrapper = list(wrapper)
        if path is None:
            self.path = default_cni_path()
        elif isinstance(path, str):
            self.path = [p for p in path.split(":") if p]
        else:
            self.path = list(path)
        self.timeout = timeout
        self.extra_env = dict(env or {})
        self.data_dir = Path(data_dir) if data_dir is not None else None
        self.history: list[PluginCall] = []  # every call made, for post-mortems

    # ----- low level -----------------------------------------------------------------------
    def find_plugin(self, plugin_type: str) -> str | None:
        """Path of the executable for `type`, searched in CNI_PATH order (like FindInPath)."""
        if not plugin_type or "/" in plugin_type or plugin_type in (".", ".."):
            return None
        for d in self.path:
            candidate = os.path.join(d, plugin_type)
            if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
                return candidate
        return None

    def exec_plugin(
        self,
        plugin_type: str,
        command: str,
        config: Mapping[str, Any],
        *,
        container_id: str = "",
        netns: str | None = "",
        ifname: str = "",
        args: CniArgs = None,
        cni_path: str | None = None,
        raise_on_error: bool = True,
    ) -> PluginCall:
        """Exec one plugin once with exactly these CNI_* values and this stdin.

        The building block of every list operation, and the tool for tests that need to send
        something a runtime never would (a bad env, a missing field).
        """
        cni_env = {
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": container_id,
            "CNI_NETNS": netns or "",
            "CNI_ARGS": _stringify_args(parse_cni_args(args)),
            "CNI_IFNAME": ifname,
            "CNI_PATH": cni_path if cni_path is not None else ":".join(self.path),
        }
        exe = self.find_plugin(plugin_type)
        call = PluginCall(plugin=plugin_type, command=command, path=exe, env=cni_env, stdin=dict(config))
        self.history.append(call)
        if exe is None:
            err = PluginNotFoundError(
                f"failed to find plugin {plugin_type!r} in path {self.path}", call=call
            )
            call.error = err
            if raise_on_error:
                raise err
            return call
        env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
        env.update(self.extra_env)
        env.update(cni_env)
        data = json.dumps(config).encode()
        start = time.perf_counter()
        try:
            proc = subprocess.run(
                [*self.wrapper, exe], input=data, capture_output=True, env=env, timeout=self.timeout, check=False
            )
        except subprocess.TimeoutExpired as exc:
            call.elapsed = time.perf_counter() - start
            call.stdout = (exc.stdout or b"").decode(errors="replace")
            call.stderr = (exc.stderr or b"").decode(errors="replace")
            err = PluginTimeoutError(f"plugin timed out after {self.timeout}s", call=call)
            call.error = err
            if raise_on_error:
                raise err from None
            return call
        call.elapsed = time.perf_counter() - start
        call.exit_code = proc.returncode
        call.stdout = proc.stdout.decode(errors="replace")
        call.stderr = proc.stderr.decode(errors="replace")
        if call.stdout.strip():
            try:
                call.output = json.loads(call.stdout)
            except ValueError:
                call.output = None
        if call.exit_code != 0 and raise_on_error:
            raise self._error_for(call)
        return call

    @staticmethod
    def _error_for(call: PluginCall) -> CniCallError:
        if call.error is not None:
            return call.error
        err_obj = call.output if isinstance(call.output, dict) else None
        if err_obj is not None and "code" in err_obj:
            return CniCallError(f"plugin {call.plugin!r} failed ({call.command})", call=call, error=err_obj)
        text = (call.stdout.strip() or call.stderr.strip())[:500]
        return CniCallError(
            f"plugin {call.plugin!r} failed ({call.command}) without a CNI error object: {text!r}",
            call=call,
        )

    def _run_one(self, run: CniRun, plugin_type: str, command: str, config: dict[str, Any], **kw: Any) -> PluginCall:
        call = self.exec_plugin(plugin_type, command, config, raise_on_error=False, **kw)
        run.calls.append(call)
        if not call.ok:
            run.errors.append(self._error_for(call))
        return call

    @staticmethod
    def _build_config(
        nl: NetworkList,
        plugin: Mapping[str, Any],
        prev_result: Any,
        capability_args: Mapping[str, Any] | None,
    ) -> dict[str, Any]:
        """libcni buildOneConfig: inject name, cniVersion, prevResult and runtimeConfig."""
        conf = json.loads(json.dumps(plugin))
        conf["name"] = nl.name
        conf["cniVersion"] = nl.cni_version
        if prev_result is not None:
            conf["prevResult"] = prev_result
        caps = conf.get("capabilities") or {}
        if capability_args and isinstance(caps, dict):
            rc = {k: v for k, v in capability_args.items() if caps.get(k) is True}
            if rc:
                conf["runtimeConfig"] = rc
        return conf

    # ----- cache ---------------------------------------------------------------------------
    def cache_path(self, network: str, container_id: str, ifname: str) -> Path:
        return self.cache_dir / "results" / f"{network}-{container_id}-{ifname}"

    def _cache_add(self, nl: NetworkList, result: Any, container_id: str, ifname: str,
                   netns: str, args: list[tuple[str, str]], caps: Mapping[str, Any] | None) -> None:
        entry: dict[str, Any] = {
            "kind": CACHE_KIND,
            "containerId": container_id,
            "config": base64.b64encode(nl.to_bytes()).decode(),  # Go []byte -> base64
            "ifName": ifname,
            "networkName": nl.name,
        }
        if netns:
            entry["netns"] = netns
        if args:
            entry["cniArgs"] = [list(p) for p in args]
        if caps:
            entry["capabilityArgs"] = dict(caps)
        if result is not None:
            entry["result"] = result
        path = self.cache_path(nl.name, container_id, ifname)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(entry))
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)

    def _read_cache(self, path: Path) -> CachedAttachment | None:
        try:
            entry = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(entry, dict) or entry.get("kind") != CACHE_KIND:
            return None
        return CachedAttachment(
            path=path,
            network=entry.get("networkName", ""),
            container_id=entry.get("containerId", ""),
            ifname=entry.get("ifName", ""),
            netns=entry.get("netns", ""),
            config=base64.b64decode(entry.get("config", "")),
            cni_args=[(k, v) for k, v in entry.get("cniArgs") or []],
            capability_args=entry.get("capabilityArgs") or {},
            result=entry.get("result"),
        )

    def cached(self, conf: ConfLike | str, container_id: str, ifname: str = "eth0") -> CachedAttachment | None:
        """The cache entry for (network, id, ifname); `conf` may be just the network name."""
        name = conf if isinstance(conf, str) and not os.path.exists(conf) else load_netconf(conf).name
        return self._read_cache(self.cache_path(name, container_id, ifname))

    def cached_result(self, conf: ConfLike | str, container_id: str, ifname: str = "eth0") -> Any:
        entry = self.cached(conf, container_id, ifname)
        return entry.result if entry else None

    def cached_attachments(self, network: str | None = None) -> list[CachedAttachment]:
        """All readable cache entries (optionally of one network), sorted by file name."""
        results = self.cache_dir / "results"
        if not results.is_dir():
            return []
        out = []
        for p in sorted(results.iterdir()):
            if p.name.endswith(".tmp"):
                continue
            entry = self._read_cache(p)
            if entry and entry.ifname and entry.network and (network is None or entry.network == network):
                out.append(entry)
        return out

    # ----- runtime operations --------------------------------------------------------------
    @staticmethod
    def default_container_id(netns: str) -> str:
        """upstream cnitool's choice: 'cnitool-' + sha512(netns) hex, 25 chars in all."""
        return ("cnitool-" + hashlib.sha512(netns.encode()).hexdigest())[:25]

    def add(
        self,
        conf: ConfLike,
        netns: str,
        *,
        container_id: str | None = None,
        ifname: str = "eth0",
        args: CniArgs = None,
        capability_args: Mapping[str, Any] | None = None,
        raise_on_error: bool = True,
    ) -> CniRun:
        """AddNetworkList: plugins in order, prevResult chained, final result cached."""
        nl = load_netconf(conf)
        cid = container_id if container_id is not None else self.default_container_id(netns)
        pairs = parse_cni_args(args)
        run = CniRun("ADD", nl.name, cid, ifname)
        prev: Any = None
        for plugin in nl.plugins:
            config = self._build_config(nl, plugin, prev, capability_args)
            call = self._run_one(run, plugin["type"], "ADD", config,
                                 container_id=cid, netns=netns, ifname=ifname, args=pairs)
            if not call.ok:
                break
            if not isinstance(call.output, dict):
                run.errors.append(CniCallError(
                    f"plugin {plugin['type']!r} ADD succeeded but stdout is not a JSON result: "
                    f"{call.stdout[:300]!r}", call=call))
                break
            if not call.output.get("cniVersion"):
                call.output["cniVersion"] = nl.cni_version  # libcni fixupResultVersion
            prev = call.output
        if run.ok:
            run.result = prev
            self._cache_add(nl, prev, cid, ifname, netns, pairs, capability_args)
        if raise_on_error:
            run.raise_for_error()
        return run

    def delete(
        self,
        conf: ConfLike,
        netns: str | None,
        *,
        container_id: str | None = None,
        ifname: str = "eth0",
        args: CniArgs = None,
        capability_args: Mapping[str, Any] | None = None,
        keep_going: bool = False,
        raise_on_error: bool = True,
    ) -> CniRun:
        """DelNetworkList: plugins in reverse, prevResult = cached result (>= 0.4.0).

        `netns` may be "" or None (CNI_NETNS empty, as containerd sends after the task is gone).
        """
        nl = load_netconf(conf)
        netns = netns or ""
        cid = container_id if container_id is not None else self.default_container_id(netns)
        run = CniRun("DEL", nl.name, cid, ifname)
        cached = None
        if nl.version >= (0, 4, 0):
            cached = self.cached(nl, cid, ifname)
        prev = cached.result if cached else None
        for plugin in reversed(nl.plugins):
            config = self._build_config(nl, plugin, prev, capability_args)
            call = self._run_one(run, plugin["type"], "DEL", config,
                                 container_id=cid, netns=netns, ifname=ifname, args=args)
            if not call.ok and not keep_going:
                break
        if run.ok:  # libcni drops the cache entry whatever the version (it only reads it >= 0.4.0)
            self.cache_path(nl.name, cid, ifname).unlink(missing_ok=True)
        if raise_on_error:
            run.raise_for_error()
        return run

    def check(
        self,
        conf: ConfLike,
        netns: str,
        *,
        container_id: str | None = None,
        ifname: str = "eth0",
        args: CniArgs = None,
        capability_args: Mapping[str, Any] | None = None,
        raise_on_error: bool = True,
    ) -> CniRun:
        """CheckNetworkList: plugins in order, prevResult = cached ADD result."""
        nl = load_netconf(conf)
        cid = container_id if container_id is not None else self.default_container_id(netns)
        run = CniRun("CHECK", nl.name, cid, ifname)
        if nl.version < (0, 4, 0):
            run.errors.append(CniCallError(
                f"configuration version {nl.cni_version!r} does not support the CHECK command"))
        elif not nl.disable_check:
            cached = self.cached(nl, cid, ifname)
            prev = cached.result if cached else None
            for plugin in nl.plugins:
                config = self._build_config(nl, plugin, prev, capability_args)
                call = self._run_one(run, plugin["type"], "CHECK", config,
                                     container_id=cid, netns=netns, ifname=ifname, args=args)
                if not call.ok:
                    break
        if raise_on_error:
            run.raise_for_error()
        return run

    def gc(
        self,
        conf: ConfLike,
        valid_attachments: Iterable[tuple[str, str] | Mapping[str, str]] | None = (),
        *,
        delete_stale: bool = True,
        force: bool = False,
        raise_on_error: bool = True,
    ) -> CniRun:
        """GCNetworkList: DEL stale cached attachments, then GC every plugin (>= 1.1.0).

        `valid_attachments` are (containerID, ifname) pairs; None omits the key entirely.
        `force` sends GC even to configs older than 1.1.0 (libcni would not).
        """
        nl = load_netconf(conf)
        run = CniRun("GC", nl.name)
        valid: list[dict[str, str]] | None = None
        if valid_attachments is not None:
            valid = []
            for a in valid_attachments:
                if isinstance(a, Mapping):
                    valid.append({"containerID": a["containerID"], "ifname": a["ifname"]})
                else:
                    valid.append({"containerID": a[0], "ifname": a[1]})
        keep = {(v["containerID"], v["ifname"]) for v in valid or []}
        if delete_stale:
            for entry in self.cached_attachments(nl.name):
                if (entry.container_id, entry.ifname) in keep:
                    continue
                sub = self.delete(nl, entry.netns, container_id=entry.container_id,
                                  ifname=entry.ifname, args=entry.cni_args,
                                  capability_args=entry.capability_args, raise_on_error=False)
                run.calls.extend(sub.calls)
                run.errors.extend(sub.errors)
        if (nl.version >= (1, 1, 0) or force) and not nl.disable_gc:
            for plugin in nl.plugins:
                config = json.loads(json.dumps(plugin))
                config["name"] = nl.name
                config["cniVersion"] = nl.cni_version
                if valid is not None:
                    config["cni.dev/valid-attachments"] = valid
                self._run_one(run, plugin["type"], "GC", config)
        if raise_on_error:
            run.raise_for_error()
        return run

    def status(self, conf: ConfLike, *, force: bool = False, raise_on_error: bool = True) -> CniRun:
        """GetStatusNetworkList: STATUS to each plugin until one fails (>= 1.1.0 or `force`)."""
        nl = load_netconf(conf)
        run = CniRun("STATUS", nl.name)
        if nl.version >= (1, 1, 0) or force:
            for plugin in nl.plugins:
                config = json.loads(json.dumps(plugin))
                config["name"] = nl.name
                config["cniVersion"] = nl.cni_version
                if not self._run_one(run, plugin["type"], "STATUS", config).ok:
                    break
        if raise_on_error:
            run.raise_for_error()
        return run

    def version(
        self,
        conf_or_type: ConfLike,
        *,
        cni_version: str = CURRENT_SPEC_VERSION,
        raise_on_error: bool = True,
    ) -> CniRun:
        """VERSION for a plugin type (a bare name) or each distinct type in a config.

        `run.result` is the list of parsed outputs (`supportedVersions` ...), one per type.
        """
        if isinstance(conf_or_type, str) and "/" not in conf_or_type and not os.path.exists(conf_or_type):
            types, network = [conf_or_type], ""
        else:
            nl = load_netconf(conf_or_type)
            types = list(dict.fromkeys(p["type"] for p in nl.plugins))
            network = nl.name
        run = CniRun("VERSION", network)
        outputs = []
        for t in types:
            # libcni sets fake values that plugins built on old skel versions require.
            call = self._run_one(run, t, "VERSION", {"cniVersion": cni_version},
                                 netns="dummy", ifname="dummy", cni_path="dummy")
            outputs.append(call.output if call.ok else None)
        run.result = outputs
        if raise_on_error:
            run.raise_for_error()
        return run

    def cleanup(self) -> list[CniRun]:
        """DEL every attachment still in the cache, using its cached config (for finalizers)."""
        runs = []
        for entry in self.cached_attachments():
            try:
                conf = json.loads(entry.config)
            except ValueError:
                entry.path.unlink(missing_ok=True)
                continue
            netns = entry.netns if entry.netns and os.path.exists(entry.netns) else ""
            runs.append(self.delete(conf, netns, container_id=entry.container_id, ifname=entry.ifname,
                                    args=entry.cni_args, capability_args=entry.capability_args,
                                    keep_going=True, raise_on_error=False))
        return runs


def bridge_conflist(
    name: str,
    *,
    bridge: str,
    subnets: Sequence[str] | str,
    data_dir: str | os.PathLike,
    plugin_type: str = "bridge",
    ipam_type: str = "host-local",
    cni_version: str = "1.0.0",
    is_gateway: bool = True,
    is_default_gateway: bool = False,
    ip_masq: bool = False,
    extra: Mapping[str, Any] | None = None,
    chain: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """A conflist for a bridge-style plugin (Go `bridge` or `pybridge`; same option names).

    One range set per subnet (so ["10.1.2.0/24", "fd00::/64"] is dual stack). `chain` plugins
    (loopback, portmap, tuning, ...) are appended after the main plugin.
    """
    if isinstance(subnets, str):
        subnets = [subnets]
    main: dict[str, Any] = {
        "type": plugin_type,
        "bridge": bridge,
        "isGateway": is_gateway,
        "isDefaultGateway": is_default_gateway,
        "ipMasq": ip_masq,
        "ipam": {
            "type": ipam_type,
            "dataDir": str(data_dir),
            "ranges": [[{"subnet": s}] for s in subnets],
        },
    }
    if extra:
        main.update(extra)
    return {"cniVersion": cni_version, "name": name, "plugins": [main, *[dict(p) for p in chain]]}


# ----- command line --------------------------------------------------------------------------
def _parse_valid(items: Sequence[str]) -> list[tuple[str, str]]:
    out = []
    for item in items:
        cid, sep, ifname = item.rpartition(":")
        if not sep:
            raise SystemExit(f"--valid wants CONTAINERID:IFNAME, got {item!r}")
        out.append((cid, ifname))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """`cnitool`-compatible command line; prints the ADD result, or the error object."""
    ap = argparse.ArgumentParser(prog="python -m tests.support.cnitool", description=__doc__.split("\n\n")[0])
    ap.add_argument("command", choices=["add", "del", "check", "gc", "status", "version"])
    ap.add_argument("conflist", help="conflist or .conf file (for 'version' also a plugin type)")
    ap.add_argument("netns", nargs="?", default="", help="network namespace path (ADD/DEL/CHECK)")
    ap.add_argument("--id", dest="container_id", default=None, help="container id (default: from netns)")
    ap.add_argument("--ifname", default="eth0")
    ap.add_argument("--args", dest="cni_args", default=os.environ.get("CNI_ARGS", ""), help="CNI_ARGS K=V;K=V")
    ap.add_argument("--path", default=os.environ.get("CNI_PATH") or ":".join(default_cni_path()),
                    help="CNI_PATH, DIR:DIR (default: venv bin, /opt/cni/bin, /usr/lib/cni)")
    ap.add_argument("--cache-dir", default=os.environ.get("CNI_CACHE_DIR", "/var/lib/cni"),
                    help="libcni cache dir (results/ go below it)")
    ap.add_argument("--capability-args", default=os.environ.get("CAP_ARGS", ""),
                    help="JSON object of capability args (portMappings, ips, mac, ...)")
    ap.add_argument("--valid", action="append", default=[], metavar="ID:IFNAME",
                    help="GC: a valid attachment (repeatable)")
    ap.add_argument("--keep-going", action="store_true", help="DEL: continue past failing plugins")
    ap.add_argument("--timeout", type=float, default=120.0)
    ap.add_argument("-v", "--verbose", action="store_true", help="per-call timing on stderr")
    ns = ap.parse_args(argv)

    tool = CniTool(ns.cache_dir, ns.path, timeout=ns.timeout)
    caps = json.loads(ns.capability_args) if ns.capability_args else None
    common = dict(container_id=ns.container_id, ifname=ns.ifname, args=ns.cni_args or None,
                  capability_args=caps, raise_on_error=False)
    if ns.command in ("add", "check") and not ns.netns:
        ap.error(f"{ns.command} needs NETNS")
    try:
        if ns.command == "add":
            run = tool.add(ns.conflist, ns.netns, **common)
        elif ns.command == "del":
            run = tool.delete(ns.conflist, ns.netns, keep_going=ns.keep_going, **common)
        elif ns.command == "check":
            run = tool.check(ns.conflist, ns.netns, **common)
        elif ns.command == "gc":
            run = tool.gc(ns.conflist, _parse_valid(ns.valid), raise_on_error=False)
        elif ns.command == "status":
            run = tool.status(ns.conflist, raise_on_error=False)
        else:
            run = tool.version(ns.conflist, raise_on_error=False)
    except (OSError, ValueError) as exc:
        print(f"cnitool: {exc}", file=sys.stderr)
        return 2
    if ns.verbose:
        for call in run.calls:
            print(f"cnitool: {call.summary()}", file=sys.stderr)
    if not run.ok:
        err = run.errors[0]
        if err.error is not None:
            print(json.dumps(err.error, indent=2))
        print(f"cnitool: {err}", file=sys.stderr)
        return 1
    if ns.command == "add":
        print(json.dumps(run.result, indent=2))
    elif ns.command == "version":
        print(json.dumps(run.result[0] if len(run.result) == 1 else run.result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
