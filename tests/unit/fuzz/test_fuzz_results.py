"""Property-based tests of the result converter (`cni_bridge.cni.versions`) and of
`attachment.Addressing.from_result` / `build_result`.

Valid results: every version's output is spec-shaped, survives JSON, parses back to the same
addressing, is accepted as a prevResult, and chains (merge_prev) into a spec-shaped result.
Junk prevResults: refused with a PluginError (code 7) or accepted -- and when accepted, they must
chain into a spec-shaped result too (the check is as strong as what the code relies on).
"""

from __future__ import annotations

import copy
import ipaddress
import json
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from cni_bridge.attachment import Addressing, IpConfig, RouteConfig, build_result, interface_entry
from cni_bridge.cni.protocol import SUPPORTED_VERSIONS
from cni_bridge.cni.versions import check_result, convert, merge_prev
from cni_bridge.errors import PluginError
from tests.support.fuzzing import (
    V11_INTERFACE_KEYS,
    V11_ROUTE_KEYS,
    assert_cni_result,
    fuzz,
    json_objects,
    json_values,
    key_junk,
    mutations,
)

versions = st.sampled_from(SUPPORTED_VERSIONS)
macs = st.sampled_from(["02:00:00:00:00:01", "0a:58:0a:f4:00:07", "ff:ff:ff:ff:ff:fe"])
names = st.sampled_from(["eth0", "net1", "cni0", "veth0123456789a", "e" * 15])
SANDBOX = "/var/run/netns/x"


def _interface(version: int, address: int, prefix: int) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    bits = 32 if version == 4 else 128
    raw = address % 2**bits
    return ipaddress.ip_interface((raw if version == 4 else ipaddress.IPv6Address(raw), prefix % (bits + 1)))


# Addresses are drawn as integers (cheaper than st.ip_addresses; generation is the run time).
_ips = st.tuples(st.sampled_from([4, 6]), st.integers(0, 2**128 - 1), st.integers(0, 128), st.booleans(),
                 st.integers(0, 2**128 - 1))
ip_configs = _ips.map(lambda t: IpConfig(_interface(t[0], t[1], t[2]),
                                         _interface(t[0], t[4], 0).ip if t[3] else None))
route_configs = _ips.map(lambda t: RouteConfig(_interface(t[0], t[1], t[2]).network,
                                               _interface(t[0], t[4], 0).ip if t[3] else None))
dns_sections = st.sampled_from([{}, {"nameservers": ["10.0.0.1", "fd00::1"]}, {"domain": "example.org"},
                                {"nameservers": ["8.8.8.8"], "search": ["a.example", "b"], "options": ["ndots:5"]},
                                {"search": [], "options": []}])
addressings = st.builds(Addressing, st.lists(ip_configs, max_size=3), st.lists(route_configs, max_size=3),
                        dns_sections)
V11_ROUTE = {"mtu": 1400, "advmss": 1360, "priority": 10, "table": 100, "scope": 0}
V11_INTERFACE = {"socketPath": "/run/x.sock", "pciID": "0000:00:1f.6"}


@st.composite
def canonical_results(draw: st.DrawFn) -> tuple[dict[str, Any], Addressing]:
    """What a mode returns: build_result over 1-4 interfaces, plus 1.1.0-only fields sometimes."""
    interfaces = [interface_entry(draw(names), draw(macs), SANDBOX if draw(st.booleans()) else None,
                                  draw(st.sampled_from([None, 1500, 9000])))
                  for _ in range(draw(st.integers(1, 4)))]
    addressing = draw(addressings)
    result = build_result(interfaces, draw(st.integers(0, len(interfaces) - 1)), addressing)
    if draw(st.booleans()):
        for route in result["routes"]:
            route.update(V11_ROUTE)
        for entry in interfaces:
            entry.update(V11_INTERFACE)
    return result, addressing


def without_v11(result: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(result)
    for route in out.get("routes", []):
        for key in V11_ROUTE_KEYS:
            route.pop(key, None)
    for entry in out.get("interfaces", []):
        for key in V11_INTERFACE_KEYS:
            entry.pop(key, None)
    return out


@fuzz(1000)
@given(canonical_results(), versions)
def test_convert_valid_results(made: tuple[dict[str, Any], Addressing], version: str) -> None:
    result, addressing = made
    out = convert(result, version)
    assert_cni_result(out, version)
    assert json.loads(json.dumps(out)) == out
    parsed = Addressing.from_result(out)
    assert (parsed.ips, parsed.routes) == (addressing.ips, addressing.routes)
    assert parsed.dns == (addressing.dns or {})
    assert check_result(out) is out  # our own result is a good prevResult for the next plugin
    back = convert(out, "1.1.0")
    expected = convert(result, "1.1.0")
    assert back == (expected if version == "1.1.0" else without_v11(expected))


@fuzz(500)
@given(canonical_results(), canonical_results(), versions)
def test_chaining(prev: tuple[dict[str, Any], Addressing], ours: tuple[dict[str, Any], Addressing],
                  version: str) -> None:
    """prevResult (as the previous plugin printed it) + our result: interfaces appended, our
    ips re-indexed, no address listed twice, spec-shaped in every version."""
    prev_out = check_result(convert(prev[0], version))
    merged = convert(merge_prev(prev_out, ours[0]), version)
    assert_cni_result(merged, version)
    assert len(merged["interfaces"]) == len(prev_out["interfaces"]) + len(ours[0]["interfaces"])
    base = len(prev_out["interfaces"])
    for ip in ours[0]["ips"]:
        assert ip["address"] in [m["address"] for m in merged["ips"] if m.get("interface") == ip["interface"] + base]


PREV_KEYS = ("cniVersion", "interfaces", "ips", "routes", "dns")


@fuzz(1200)
@given(st.one_of(json_values, json_objects(PREV_KEYS),
                 canonical_results().flatmap(lambda made: mutations(convert(made[0], "0.4.0"), key_junk("pbt0000")))),
       canonical_results(), versions)
@example({"interfaces": 5}, ({"interfaces": [], "ips": [], "routes": [], "dns": {}}, Addressing()), "1.0.0")
@example({"ips": [{"address": 5}]}, ({"interfaces": [], "ips": [], "routes": [], "dns": {}}, Addressing()), "1.0.0")
@example([1], ({"interfaces": [], "ips": [], "routes": [], "dns": {}}, Addressing()), "1.0.0")
@example({"interfaces": [{"name": "eth0", "mtu": "big"}]},
         ({"interfaces": [], "ips": [], "routes": [], "dns": {}}, Addressing()), "1.1.0")
@example({"dns": {"nameservers": "8.8.8.8"}}, ({"interfaces": [], "ips": [], "routes": [], "dns": {}}, Addressing()),
         "1.1.0")
@example({"dns": {"domain": None, "nameservers": None}},  # null members must not reach the result
         ({"interfaces": [], "ips": [], "routes": [], "dns": {}}, Addressing()), "1.1.0")
def test_junk_prev_results(junk: Any, ours: tuple[dict[str, Any], Addressing], version: str) -> None:
    """Only PluginError (code 7) comes out of parsing junk; what is accepted chains cleanly."""
    for parse in (check_result, Addressing.from_result):
        try:
            parse(junk)
        except PluginError as exc:
            assert exc.code == 7 and exc.msg
    try:
        prev = check_result(junk)
    except PluginError:
        return
    assert_cni_result(convert(merge_prev(prev, ours[0]), version), version)

