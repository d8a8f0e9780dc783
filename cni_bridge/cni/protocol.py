"""The CNI wire contract (SPEC.md): parameters, versions, error objects. Standard library only,
because the exec'd client imports it before deciding where the work happens."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from cni_bridge import validate
from cni_bridge.errors import DECODE_FAILURE, INCOMPATIBLE_VERSION, INVALID_CONFIG, INVALID_ENV, PluginError

SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
LATEST = "1.1.0"
COMMANDS = ("ADD", "DEL", "CHECK", "VERSION", "GC", "STATUS")
# CNI_ARGS keys we understand; anything else needs IgnoreUnknown=1 (as in the reference plugins).
KNOWN_ARGS = ("IgnoreUnknown", "IP", "MAC", "K8S_POD_NAMESPACE", "K8S_POD_NAME",
              "K8S_POD_INFRA_CONTAINER_ID", "K8S_POD_UID")


def version_tuple(version: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in version.split("."))
    except ValueError:
        return (0,)


@dataclass
class CniRequest:
    """One invocation: the command, the CNI_* parameters and the decoded network config."""
    command: str
    container_id: str = ""
    netns: str = ""
    ifname: str = ""
    args: dict[str, str] = field(default_factory=dict)
    path: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    stdin: bytes = b""
    # The caller's whole environment: a delegated IPAM plugin is exec'd with it (the spec's rule).
    env: Mapping[str, str] = field(default_factory=dict)
    # Set by the daemon: True once the exec'd client that sent this request has gone away (the
    # runtime killed it), so nobody will ever read the result.
    caller_gone: Callable[[], bool] | None = None

    @property
    def version(self) -> str:
        return self.config.get("cniVersion", LATEST) if isinstance(self.config, dict) else LATEST

    def runtime_config(self) -> dict[str, Any]:
        rc = self.config.get("runtimeConfig")
        return rc if isinstance(rc, dict) else {}


def parse_cni_args(raw: str) -> dict[str, str]:
    """`K=V;K2=V2` -> dict. Unknown keys are an error unless IgnoreUnknown is true."""
    out: dict[str, str] = {}
    if not raw:
        return out
    for pair in raw.split(";"):
        if not pair:
            continue
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise PluginError(INVALID_ENV, f"CNI_ARGS: invalid pair {pair!r}", "expected KEY=VALUE;KEY=VALUE")
        out[key] = value
    ignore = out.get("IgnoreUnknown", "").lower() in ("1", "true")
    unknown = [k for k in out if k not in KNOWN_ARGS]
    if unknown and not ignore:
        raise PluginError(INVALID_ENV, f"CNI_ARGS: unknown key(s) {', '.join(unknown)}",
                          "set IgnoreUnknown=1 to ignore keys this plugin does not use")
    return out


def load_json(raw: bytes | str) -> Any:
    """json.loads, with nesting too deep for the parser reported as a ValueError like any other
    undecodable input (a RecursionError escapes every `except ValueError` and, in the daemon,
    the worker thread)."""
    try:
        return json.loads(raw)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def decode_config(stdin: bytes) -> dict[str, Any]:
    try:
        config = load_json(stdin.decode("utf-8"))
    except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise PluginError(DECODE_FAILURE, "cannot decode the network configuration on stdin", str(exc)) from None
    if not isinstance(config, dict):
        raise PluginError(DECODE_FAILURE, "the network configuration must be a JSON object")
    return config


def check_version(config: Mapping[str, Any], command: str) -> str:
    version = config.get("cniVersion")
    if not isinstance(version, str) or version not in SUPPORTED_VERSIONS:
        raise PluginError(INCOMPATIBLE_VERSION, f"incompatible CNI version {version!r}",
                          f"supported: {', '.join(SUPPORTED_VERSIONS)}")
    if command == "CHECK" and version_tuple(version) < (0, 4, 0):
        raise PluginError(INCOMPATIBLE_VERSION, f"config version {version} does not allow CHECK", "needs 0.4.0 or later")
    if command in ("GC", "STATUS") and version_tuple(version) < (1, 1, 0):
        raise PluginError(INCOMPATIBLE_VERSION, f"config version {version} does not allow {command}", "needs 1.1.0 or later")
    return version


def parse_request(env: Mapping[str, str], stdin: bytes) -> CniRequest:
    """Validate the environment and decode stdin; raises PluginError with the spec's codes."""
    command = env.get("CNI_COMMAND", "")
    if command not in COMMANDS:
        raise PluginError(INVALID_ENV, f"CNI_COMMAND {command!r} is not one of {', '.join(COMMANDS)}")
    req = CniRequest(command=command, stdin=stdin, env=env)
    if command == "VERSION":
        if stdin.strip():
            try:
                req.config = decode_config(stdin)
            except PluginError:
                req.config = {}
        return req
    if command in ("ADD", "DEL", "CHECK"):
        req.container_id = validate.container_id(env.get("CNI_CONTAINERID", ""))
        req.ifname = validate.ifname(env.get("CNI_IFNAME", ""), "CNI_IFNAME", from_env=True)
        netns = env.get("CNI_NETNS", "")
        if command != "DEL" and not netns:
            raise PluginError(INVALID_ENV, "CNI_NETNS is required for " + command)
        req.netns = validate.netns_path(netns) if netns else ""
        req.args = parse_cni_args(env.get("CNI_ARGS", ""))
    req.path = [p for p in env.get("CNI_PATH", "").split(":") if p]
    req.config = decode_config(stdin)
    check_version(req.config, command)
    if not isinstance(req.config.get("name"), str):
        raise PluginError(INVALID_CONFIG, "the network configuration has no name")
    return req


def error_version(stdin: bytes) -> str:
    """The version of an error about a request that did not parse: the config's when it names a
    supported one (a 0.3.0 runtime told "CHECK needs 0.4.0" gets a 0.3.0 error object)."""
    try:
        version = load_json(stdin).get("cniVersion")
    except (ValueError, AttributeError):
        return LATEST
    return version if isinstance(version, str) and version in SUPPORTED_VERSIONS else LATEST


def error_object(exc: PluginError, version: str) -> dict[str, Any]:
    if version not in SUPPORTED_VERSIONS:
        version = LATEST
    return {"cniVersion": version, "code": exc.code, "msg": exc.msg, "details": exc.details}


def version_object(config: Mapping[str, Any]) -> dict[str, Any]:
    version = config.get("cniVersion") if isinstance(config, Mapping) else None
    return {"cniVersion": version if version in SUPPORTED_VERSIONS else LATEST,
            "supportedVersions": list(SUPPORTED_VERSIONS)}


def dumps(obj: Any) -> bytes:
    return (json.dumps(obj, indent=4) + "\n").encode()
