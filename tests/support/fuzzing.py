"""Shared pieces of the property-based fuzz tests: settings, junk values, mutation of valid
inputs, spec-shape checks, and the "nothing changed on the host" guards.

Why one module: the CNI front end, the result converter and the Docker driver are fuzzed with the
same junk and judged by the same shapes; each test module only says what its inputs look like.

Safety rules the strategies follow (the fuzzed code runs as root on a shared host):
* a value that could name a host object (bridge, uplink, master, netns, dataDir, CNI_PATH) is
  either invalid or carries this session's prefix / lives under the test's tmp dir;
* an IPAM dataDir is never dropped or emptied (that would mean the system default directory).
"""

from __future__ import annotations

import contextlib
import copy
import ipaddress
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from cni_bridge.cni.protocol import SUPPORTED_VERSIONS, version_tuple
from tests.support.hostsnap import assert_unchanged, mine, snapshot

# ----- settings ---------------------------------------------------------------------------------


def fuzz(examples: int) -> settings:
    """Reproducible (derandomized, no example database) and free of timing: CI runs the same
    inputs every time and a slow shared machine cannot fail a run."""
    return settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much,
                                           HealthCheck.function_scoped_fixture])


# ----- junk -------------------------------------------------------------------------------------
scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**64), 2**64),
                    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=16))
# Arbitrary JSON values. Small on purpose: generating them is most of the suite's run time.
json_values = st.recursive(scalars, lambda kids: st.one_of(
    st.lists(kids, max_size=3), st.dictionaries(st.text(max_size=8), kids, max_size=3)), max_leaves=6)


def json_objects(keys: Iterable[str] = ()) -> st.SearchStrategy[dict[str, Any]]:
    """Objects whose keys are partly the names the code looks for, so the junk gets past `get`."""
    key = st.one_of(st.sampled_from(sorted(keys)), st.text(max_size=10)) if keys else st.text(max_size=10)
    return st.dictionaries(key, json_values, max_size=5)


def stdin_bytes(keys: Iterable[str] = ()) -> st.SearchStrategy[bytes]:
    """Bytes that are not JSON, JSON that is not an object, and objects of junk."""
    return st.one_of(st.binary(max_size=64), st.text(max_size=40).map(str.encode),
                     json_values.map(lambda v: json.dumps(v).encode()),
                     json_objects(keys).map(lambda v: json.dumps(v).encode()))


BAD_IFNAMES = ["", ".", "..", "a/b", "x" * 16, "has space", "eth0\n", "é" * 8, "a b", 5, None, [], {}]
BAD_ADDRESSES = ["10.0.0.0/33", "300.1.1.1", "1.2.3", "fe80::1%eth0", "::/129", "abc", "", " ", 5,
                 "10.0.0.1/24/1", "0.0.0.0/0", "10.0.0.0/8", "224.0.0.1", True]
BAD_VERSIONS = ["0.1.0", "0.2.0", "2.0.0", "1.1", "1.0.0 ", "", "v1.0.0", None, 1.0, 1, [], {}]
BOOL_JUNK = ["true", "false", "True", "yes", "1", 1, 0, None, [], "", "falsey"]
INT_JUNK = ["abc", -1, 0, 67, 65536, 10**9, 10**30, "1500 ", "1e3", 1500.5, "", True, "-5", "0x10"]


def key_junk(prefix: str) -> dict[str, list[Any]]:
    """Values that are wrong (or valid but harmless: prefixed, nonexistent) for a given key."""
    ifnames = BAD_IFNAMES + [f"{prefix}nolink", f"{prefix}/x", prefix + "x" * 12]
    return {
        "cniVersion": BAD_VERSIONS + list(SUPPORTED_VERSIONS),
        "name": ["", "a/b", "..", "-x", ".hidden", "x" * 300, "a b", 5, None, f"{prefix}other"],
        "type": ["pybridge", "bridge", "", 5, None],
        "mode": ["bridgee", "", "BRIDGE", "macvlan", "ipvlan", "vlan", 1, None],
        "bridge": ifnames, "uplink": ifnames, "master": ifnames, "parent": ifnames,
        "mtu": INT_JUNK, "vlanId": [0, 4095, -1, "abc", "10", 1, 4094, 2.5, True],
        "macvlanMode": ["bridge", "vepa", "l2", "", 0], "ipvlanMode": ["l2", "l3", "l3s", "bridge", ""],
        **{k: BOOL_JUNK for k in ("isGateway", "isDefaultGateway", "ipMasq", "hairpinMode",
                                  "promiscMode", "forceAddress")},
        "subnet": BAD_ADDRESSES + ["10.0.0.0/31", "10.0.0.0/32", "fd00::/127", "10.0.0.0"],
        **{k: BAD_ADDRESSES for k in ("rangeStart", "rangeEnd", "gateway", "gw", "dst", "address")},
        "ranges": [[], [[]], [{}], [[{}]], [["10.1.0.0/24"]], "10.1.0.0/24", 5],
        "routes": [[{}], [{"gw": "10.0.0.1"}], "0.0.0.0/0", [5]],
        "dns": [[], "8.8.8.8", {"nameservers": "8.8.8.8"}, {"nameservers": [5]}, {"search": "a"},
                {"domain": 5}, {"options": [None]}],
        "nameservers": ["8.8.8.8", [5], [None], {}], "search": ["a", [1]], "options": ["x", [[]]],
        # ipam.type: anything but our in-process IPAM is exec'd from CNI_PATH (a missing dir).
        "ipam": [None, {}, [], "pybridge-ipam", 5],
        "prevResult": [None, [], 5, "x", {"interfaces": 5}, {"ips": [{"address": 5}]},
                       {"ips": [{"address": "10.0.0.2/24", "interface": 7}]},
                       {"interfaces": [{"name": 5}]}, {"routes": [{"dst": "x"}]}, {"dns": []},
                       {"interfaces": [{"name": "eth0", "sandbox": 5}]}, {"ips": "abc"}],
        "mac": ["", "01:00:5e:00:00:01", "02:00:00:00:00", "zz:00:00:00:00:00", 5, None],
        "ips": [5, "10.0.0.2", ["x"], [None], [5]],
        "ipRanges": [5, [5], [[{}]], [[{"subnet": "x"}]]],
    }


# dataDir: only values that are rejected before any file is touched. An absent, null or empty
# dataDir means the system default directory, so it is never produced.
DATA_DIR_JUNK = [5, -1, True, [], {}, "relative/dir", "rel", "\x00", "./x", "~/x"]


def _paths(obj: Any, at: tuple = ()) -> list[tuple]:
    out: list[tuple] = []
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for key, value in items:
        out.append(at + (key,))
        out.extend(_paths(value, at + (key,)))
    return out


def _parent(obj: Any, path: tuple) -> Any:
    for key in path[:-1]:
        obj = obj[key]
    return obj


_new_keys = st.text(min_size=1, max_size=8).filter(lambda k: k not in ("dataDir", "ipam"))


@st.composite
def mutations(draw: st.DrawFn, base: Mapping[str, Any], junk: Mapping[str, list[Any]],
              max_changes: int = 3) -> dict[str, Any]:
    """`base` with 1..max_changes fields replaced by junk (the key's own junk or any JSON value),
    deleted, or joined by an unknown key (also at the top level, which keeps a valid body valid).
    `dataDir` is only ever made invalid."""
    obj = copy.deepcopy(dict(base))
    for _ in range(draw(st.integers(1, max_changes))):
        path = draw(st.sampled_from([()] + _paths(obj)))
        if not path:  # an unknown top-level key: must be ignored (or refused clearly)
            obj[draw(_new_keys)] = draw(json_values)
            continue
        parent, key = _parent(obj, path), path[-1]
        name = key if isinstance(key, str) else (path[-2] if len(path) > 1 and isinstance(path[-2], str) else "")
        if key == "dataDir":
            parent[key] = draw(st.sampled_from(DATA_DIR_JUNK))
            continue
        action = draw(st.sampled_from(["replace", "replace-specific", "delete", "add"]))
        specific = junk.get(name, [])
        if action == "delete" and isinstance(parent, dict):
            del parent[key]  # dropping a whole `ipam` is safe: no IPAM at all
        elif action == "add" and isinstance(parent[key], dict):
            parent[key][draw(_new_keys)] = draw(json_values)
        elif action == "replace-specific" and specific:
            parent[key] = copy.deepcopy(draw(st.sampled_from(specific)))
        elif not (isinstance(parent[key], dict) and "dataDir" in parent[key]):
            parent[key] = draw(json_values)  # (an object holding dataDir only gets specific junk)
    return obj


# ----- spec shapes ------------------------------------------------------------------------------
TRACEBACK = re.compile(r"Traceback \(most recent call last\)|File \".*\", line \d+")
CNI_CODES = {1, 2, 3, 4, 5, 6, 7, 11, 50, 51}
V11_ROUTE_KEYS = ("mtu", "advmss", "priority", "table", "scope")
V11_INTERFACE_KEYS = ("mtu", "socketPath", "pciID")


def assert_no_traceback(*texts: Any) -> None:
    for text in texts:
        assert not TRACEBACK.search(str(text)), f"traceback in output: {text!r}"


def assert_cni_error(stdout: bytes, allowed: Iterable[int]) -> dict[str, Any]:
    """A CNI error object (SPEC.md "Error"): cniVersion, integer code, message; a code from the
    spec's table (never 999: that is how the plugin reports its own bugs)."""
    err = json.loads(stdout)
    assert isinstance(err, dict), err
    assert err.get("cniVersion") in SUPPORTED_VERSIONS, err
    assert type(err.get("code")) is int, err
    assert isinstance(err.get("msg"), str) and err["msg"], err
    assert isinstance(err.get("details", ""), str), err
    assert err["code"] != 999 and not err["msg"].startswith("internal error"), f"plugin bug: {err}"
    assert_no_traceback(err["msg"], err.get("details", ""))
    allowed = set(allowed)
    assert err["code"] in allowed, f"code {err['code']} not in {sorted(allowed)}: {err}"
    return err


def _is_cidr(text: Any) -> bool:
    if not isinstance(text, str) or "/" not in text:
        return False
    try:
        ipaddress.ip_interface(text)
    except ValueError:
        return False
    return True


def _is_ip(text: Any) -> bool:
    try:
        ipaddress.ip_address(text)
    except (ValueError, TypeError):
        return False
    return isinstance(text, str)


def assert_cni_result(result: Any, version: str) -> None:
    """The success result of ADD for `version`: field types, `ips[].version` only before 1.0.0,
    1.1.0-only fields only in 1.1.0, interface indexes in range. An optional field may be null
    (JSON decoders in Go, which runtimes use, read null as absent)."""
    assert isinstance(result, dict) and result.get("cniVersion") == version, result
    legacy, pre11 = version_tuple(version) < (1, 0, 0), version_tuple(version) < (1, 1, 0)
    interfaces = result.get("interfaces", [])
    assert isinstance(interfaces, list)
    for entry in interfaces:
        assert isinstance(entry, dict) and isinstance(entry.get("name"), str) and entry["name"], entry
        for key in ("mac", "sandbox"):
            assert entry.get(key) is None or isinstance(entry[key], str), entry
        assert entry.get("mtu") is None or type(entry["mtu"]) is int, entry
        if pre11:
            assert not set(entry) & set(V11_INTERFACE_KEYS), f"1.1.0 field in a {version} result: {entry}"
    for ip in result.get("ips", []):
        assert isinstance(ip, dict) and _is_cidr(ip.get("address")), ip
        assert ip.get("gateway") is None or _is_ip(ip["gateway"]), ip
        if ip.get("interface") is not None:
            assert type(ip["interface"]) is int and 0 <= ip["interface"] < len(interfaces), (ip, interfaces)
        if legacy:
            assert ip.get("version") == str(ipaddress.ip_interface(ip["address"]).version), ip
        else:
            assert "version" not in ip, ip
    for route in result.get("routes", []):
        assert isinstance(route, dict) and isinstance(route.get("dst"), str), route
        ipaddress.ip_network(route["dst"], strict=False)
        assert route.get("gw") is None or _is_ip(route["gw"]), route
        if pre11:
            assert not set(route) & set(V11_ROUTE_KEYS), f"1.1.0 field in a {version} result: {route}"
    dns = result.get("dns", {})
    assert isinstance(dns, dict), dns
    for key in ("nameservers", "search", "options"):
        assert key not in dns or (isinstance(dns[key], list) and all(isinstance(v, str) for v in dns[key])), dns
    assert "domain" not in dns or isinstance(dns["domain"], str), dns


# ----- the host must not change -----------------------------------------------------------------
def tree(*dirs: Path) -> dict[str, bytes]:
    """Files under `dirs` with their contents; lock files (empty, left by flock) and bare
    directories are not state."""
    out: dict[str, bytes] = {}
    for d in dirs:
        for p in sorted(Path(d).rglob("*")):
            if p.is_file() and not (p.name == "lock" or p.suffix == ".lock"):
                out[str(p)] = p.read_bytes()
    return out


@contextlib.contextmanager
def files_unchanged_if(rejected: Any, *dirs: Path) -> Iterator[None]:
    """Check the files under `dirs` around one request; `rejected()` says, afterwards, whether the
    request was refused (then nothing may have been written)."""
    before = tree(*dirs)
    yield
    if rejected():
        after = tree(*dirs)
        assert after == before, f"files changed by a rejected request: {sorted(set(after) ^ set(before)) or 'contents'}"


@contextlib.contextmanager
def host_unchanged(*dirs: Path, ignore: Iterable[str] = ()) -> Iterator[None]:
    """Links, addresses, routes, nft and iptables rules, and the files under `dirs`, before vs
    after a batch. Only lines naming this session's prefix/subnets or the dirs count (other
    sessions share the host); every host name a strategy can produce carries the prefix. Lock
    files and the directories that hold them are bookkeeping, not state; `ignore`: more regexes
    for what the batch's accepted requests may legitimately leave."""
    before = snapshot(dirs=dirs)
    yield
    after = snapshot(dirs=dirs)
    assert_unchanged(before, after, only=mine(*dirs), ignore=[r"/lock = ''$", r"/locks?/$", r"/$", *ignore],
                     sections=("links", "addresses", "routes", "nft", "iptables", "files"))


# What accepted IPAM requests leave in a store after their lease is released: allocation hints.
IPAM_HINTS = (r"/bitmap\.\d+ = ", r"/last_reserved\.\d+ = ")
