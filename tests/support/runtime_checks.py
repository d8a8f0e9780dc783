"""Host-side observations shared by the runtime, chaining, conformance and k8s tests.

Why: "the runtime released everything" and "pybridge behaves like the Go bridge" are both claims
about kernel state — ports on the bridge, masquerade entries, iptables rules, lease files — made
the same way in every test file, so they are written once here. Shell-outs only (`ip`, `nft`,
`iptables-save`): no pyroute2 import, and the same view an operator has.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import json
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tests.support.cnitool import bridge_conflist
from tests.support.forwarding import forward_allowance
from tests.support.host import run
from tests.support.leaks import lease_files
from tests.support.netns import Netns
from tests.support.session import register_data_dir, unique_name
from tests.support.subnets import unique_subnet

__all__ = ["TestNetwork", "bridge_ports", "container_view", "iptables_lines", "masq_table",
           "new_network", "nft_table_text", "remove_bridge", "subnet_offset"]

PYBRIDGE = ("pybridge", "pybridge-ipam")
GO = ("bridge", "host-local")


def bridge_ports(bridge: str) -> list[str]:
    """Names of the links enslaved to `bridge` (empty when it does not exist)."""
    proc = run(["ip", "-j", "link", "show", "master", bridge], check=False)
    if proc.returncode != 0 or not proc.stdout.strip():
        return []
    return sorted(link["ifname"] for link in json.loads(proc.stdout))


def masq_table(network: str) -> str:
    """pybridge's nft table name for `network` (mirrors firewall.table_name, without importing it)."""
    import hashlib
    safe = re.sub(r"[^A-Za-z0-9_]", "_", network)[:40]
    return f"pybridge_{safe}_{hashlib.sha1(network.encode()).hexdigest()[:6]}"


def nft_table_text(network: str) -> str:
    """`nft list table inet <pybridge table>`, or '' when the table is absent."""
    if not shutil.which("nft"):
        return ""
    proc = run(["nft", "list", "table", "inet", masq_table(network)], check=False)
    return proc.stdout if proc.returncode == 0 else ""


def iptables_lines(*tables: str) -> list[str]:
    """`-A`/`-N` lines of iptables-save and ip6tables-save for `tables` (default nat + filter)."""
    out = []
    for save in ("iptables-save", "ip6tables-save"):
        if not shutil.which(save):
            continue
        for t in tables or ("nat", "filter"):
            proc = run([save, "-t", t], check=False)
            out += [f"{save}:{t}: {ln}" for ln in proc.stdout.splitlines()
                    if ln.startswith("-A ") or ln.startswith(":")]
    return out


def remove_bridge(bridge: str) -> None:
    run(["ip", "link", "delete", bridge], check=False)


def subnet_offset(addr: str, subnet: Any) -> int:
    """Position of `addr` inside `subnet` (1 = first host), so two networks compare alike."""
    return int(ipaddress.ip_interface(addr).ip) - int(ipaddress.ip_network(subnet).network_address)


def container_view(ns: Netns, subnet: Any, ifname: str = "eth0") -> dict[str, Any]:
    """The container's networking, with addresses written as offsets inside `subnet` (one
    subnet or a list, one per family): {links, addresses: [(offset, prefixlen)],
    routes: [(dst, gw_offset)]}; the subnet's own route reads 'SUBNET'. Link-local addresses and
    `lo` are left out. Two implementations given the same config must produce equal views."""
    nets = [ipaddress.ip_network(s) for s in (subnet if isinstance(subnet, (list, tuple)) else [subnet])]

    def net_of(addr: str) -> Any:
        version = ipaddress.ip_interface(addr).version
        return next(n for n in nets if n.version == version)

    links = sorted(link["ifname"] for link in ns.ip_json("link", "show") if link["ifname"] != "lo")
    addrs = []
    if ifname in links:
        for a in ns.ip_json("addr", "show", "dev", ifname)[0].get("addr_info", []):
            if a.get("scope") == "global":
                addrs.append((a["family"], subnet_offset(a["local"], net_of(a["local"])), a["prefixlen"]))
    routes = []
    for fam in ("-4", "-6"):
        for r in ns.ip_json(fam, "route", "show"):
            dst = r.get("dst", "")
            if dst.startswith("fe80") or r.get("dev") != ifname:
                continue
            if dst != "default" and ipaddress.ip_network(dst, strict=False) in nets:
                dst = "SUBNET"
            gw = subnet_offset(r["gateway"], net_of(r["gateway"])) if r.get("gateway") else None
            routes.append((fam, dst, gw))
    return {"links": links, "addresses": sorted(addrs), "routes": sorted(routes, key=str)}


@dataclasses.dataclass
class TestNetwork:
    """A unique network name, bridge, subnet and IPAM dataDir, and the conflist using them."""

    name: str
    bridge: str
    subnet: Any
    data_dir: Path
    conflist: dict[str, Any]
    __test__ = False  # not a pytest class

    @property
    def gateway(self) -> str:
        return str(ipaddress.ip_network(self.subnet).network_address + 1)

    @property
    def main(self) -> dict[str, Any]:
        return self.conflist["plugins"][0]

    def leases(self) -> list[Path]:
        """Leased addresses (files named by an IP; both host-local and pybridge-ipam do that)."""
        return [p for p in lease_files(self.data_dir) if _is_ip(p.name)]

    def state_files(self) -> list[Path]:
        """Everything the leak check counts as a lease (also pybridge-ipam's owner index)."""
        return lease_files(self.data_dir)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False


def new_network(data_dir: Path, *, impl: tuple[str, str] = PYBRIDGE, cni_version: str = "1.0.0",
                subnet: Any = None, **kwargs: Any) -> TestNetwork:
    """A bridge conflist for `impl` ((main type, ipam type)) with fresh unique names.

    kwargs go to cnitool.bridge_conflist (ip_masq, is_default_gateway, extra, chain ...).
    """
    name, bridge = unique_name("net"), unique_name("br")
    subnet = subnet or unique_subnet()
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    register_data_dir(data_dir)
    kwargs.setdefault("is_default_gateway", True)
    conf = bridge_conflist(name, bridge=bridge, subnets=[str(subnet)], data_dir=data_dir,
                           plugin_type=impl[0], ipam_type=impl[1], cni_version=cni_version, **kwargs)
    return TestNetwork(name, bridge, subnet, data_dir, conf)


def network_factory(base: Path) -> Iterator[Callable[..., TestNetwork]]:
    """Generator behind a fixture: makes networks, removes their bridges at the end. A Go bridge
    network gets the FORWARD allowance an operator gives it on a Docker host (tests.support.forwarding)."""
    made: list[TestNetwork] = []
    counter = [0]
    with contextlib.ExitStack() as allowances:

        def make(**kwargs: Any) -> TestNetwork:
            counter[0] += 1
            net = new_network(base / f"data{counter[0]}", **kwargs)
            made.append(net)
            if net.main["type"] == GO[0]:  # the Go bridge adds no FORWARD accepts of its own
                allowances.enter_context(forward_allowance(net.bridge))
            return net

        try:
            yield make
        finally:
            for net in made:
                remove_bridge(net.bridge)
