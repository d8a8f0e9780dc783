"""Delegated IPAM per the CNI spec: `pybridge-ipam` is served in-process (no exec); any other
`ipam.type` is executed from CNI_PATH with the caller's environment (the runtime's, also when
the daemon serves the request: the fast path forwards it) and the network config on stdin.
An exec that does not finish within EXEC_TIMEOUT is killed and answered with error 11."""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any

from cni_bridge.cni.protocol import CniRequest, load_json
from cni_bridge.errors import INTERNAL, INVALID_CONFIG, TRY_AGAIN, PluginError

IN_PROCESS_TYPE = "pybridge-ipam"
EXEC_TIMEOUT = 60.0  # seconds; host-local answers in milliseconds


def ipam_type(config: dict[str, Any]) -> str | None:
    ipam = config.get("ipam")
    if not ipam:
        return None
    if not isinstance(ipam, dict) or not isinstance(ipam.get("type"), str) or not ipam["type"]:
        raise PluginError(INVALID_CONFIG, "ipam.type is required when ipam is given")
    kind = ipam["type"]
    if "/" in kind or kind in (".", ".."):
        raise PluginError(INVALID_CONFIG, f"invalid ipam.type {kind!r}")
    return kind


def in_process(config: dict[str, Any]) -> bool:
    return ipam_type(config) == IN_PROCESS_TYPE


def file_ipam():
    """The in-process pybridge-ipam (cni_bridge.ipam.plugin), imported on first use: the lease
    store costs ~20 ms per exec'd in-process call, which VERSION and networks with another IPAM
    (exec'd instead) do not pay."""
    from cni_bridge.ipam import plugin  # lazy: see above
    return plugin


def _exec(req: CniRequest, command: str, extra_env: dict[str, str] | None = None) -> dict[str, Any] | None:
    kind = ipam_type(req.config)
    assert kind is not None
    binary = next((os.path.join(d, kind) for d in req.path if os.access(os.path.join(d, kind), os.X_OK)), None)
    if binary is None:
        raise PluginError(INVALID_CONFIG, f"IPAM plugin {kind!r} not found in CNI_PATH",
                          ":".join(req.path) or "(CNI_PATH is empty)")
    env = {k: v for k, v in req.env.items() if not k.startswith("CNI_")}
    env.update({"CNI_COMMAND": command, "CNI_CONTAINERID": req.container_id, "CNI_NETNS": req.netns,
                "CNI_IFNAME": req.ifname, "CNI_PATH": ":".join(req.path),
                "CNI_ARGS": ";".join(f"{k}={v}" for k, v in req.args.items())})
    env.update(extra_env or {})
    try:
        proc = subprocess.run([binary], input=json.dumps(req.config).encode(), env=env, capture_output=True,
                              timeout=EXEC_TIMEOUT)
    except subprocess.TimeoutExpired:  # run() has killed it
        raise PluginError(TRY_AGAIN, f"IPAM plugin {kind} did not answer {command} within {EXEC_TIMEOUT:g}s",
                          f"{binary} was killed; try again") from None
    out = proc.stdout.decode(errors="replace").strip()
    if proc.returncode != 0:
        try:
            err = load_json(out)
            raise PluginError(int(err.get("code", INTERNAL)), f"IPAM plugin {kind}: {err.get('msg', '')}",
                              str(err.get("details", "")))
        except (ValueError, AttributeError):
            raise PluginError(INTERNAL, f"IPAM plugin {kind} failed (exit {proc.returncode})",
                              (out or proc.stderr.decode(errors="replace")).strip()[:2000]) from None
    if not out:
        return None
    try:
        return load_json(out)
    except ValueError:
        raise PluginError(INTERNAL, f"IPAM plugin {kind} printed invalid JSON", out[:2000]) from None


def add(req: CniRequest) -> dict[str, Any]:
    if in_process(req.config):
        return file_ipam().ipam_add(req.config["name"], req.container_id, req.ifname, req.config, req.args)
    if ipam_type(req.config) is None:
        return {"ips": [], "routes": []}
    return _exec(req, "ADD") or {}


def delete(req: CniRequest) -> None:
    if in_process(req.config):
        file_ipam().ipam_del(req.config["name"], req.container_id, req.ifname, req.config)
    elif ipam_type(req.config) is not None:
        _exec(req, "DEL")


def check(req: CniRequest) -> None:
    if in_process(req.config):
        file_ipam().ipam_check(req.config["name"], req.container_id, req.ifname, req.config)
    elif ipam_type(req.config) is not None:
        _exec(req, "CHECK")


def leased_addresses(req: CniRequest) -> list:
    """Addresses the store holds for this attachment (in-process IPAM only), before release."""
    if not in_process(req.config):
        return []
    store = file_ipam().store(req.config["name"], req.config)
    return [lease.address for lease in store.leases_of(req.container_id, req.ifname)]


def gc(req: CniRequest) -> list:
    """Returns the released leases (in-process) so that the caller can clean their host state."""
    if in_process(req.config):
        return file_ipam().ipam_gc(req.config["name"], req.config)
    if ipam_type(req.config) is not None:
        _exec(req, "GC")
    return []


def status(req: CniRequest) -> None:
    if in_process(req.config):
        file_ipam().ipam_status(req.config["name"], req.config)
    elif ipam_type(req.config) is not None:
        _exec(req, "STATUS")
