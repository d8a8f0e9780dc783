"""Smoke test of the guest kernel: the link types pybridge's ipvlan/vlan modes need exist.

Why: if these fail, every ipvlan/vlan mode test in this directory would fail for a reason that
has nothing to do with pybridge. Links are made with pyroute2 (the library pybridge uses) inside
a fresh namespace and read back independently with `ip -d -j link`.

Runs only inside the kernel VM (see conftest.py); on the host everything here is skipped.
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest
from pyroute2 import NetNS

# IFLA_IPVLAN_MODE values (linux/if_link.h). pyroute2 0.9.7 names only L2/L3, not L3S.
IPVLAN_MODES = {"l2": 0, "l3": 1, "l3s": 2}


def ip_links(netns: str) -> dict[str, dict[str, Any]]:
    """Links in `netns` by name, as `ip -d -j link show` reports them."""
    out = subprocess.run(
        ["ip", "-n", netns, "-d", "-j", "link", "show"], capture_output=True, text=True, check=True
    ).stdout
    return {link["ifname"]: link for link in json.loads(out)}


def info(link: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    linkinfo = link.get("linkinfo", {})
    return linkinfo.get("info_kind"), linkinfo.get("info_data", {})


def add_parent(ns: NetNS, name: str) -> int:
    """A dummy link, up, to hang ipvlan/vlan links on; returns its index."""
    ns.link("add", ifname=name, kind="dummy")
    index = ns.link_lookup(ifname=name)[0]
    ns.link("set", index=index, state="up")
    return index


def delete(ns: NetNS, name: str) -> None:
    ns.link("del", index=ns.link_lookup(ifname=name)[0])
    assert ns.link_lookup(ifname=name) == []


def test_dummy(kernel_netns: str) -> None:
    with NetNS(kernel_netns) as ns:
        add_parent(ns, "pbdummy0")
        kind, _ = info(ip_links(kernel_netns)["pbdummy0"])
        assert kind == "dummy"
        delete(ns, "pbdummy0")
    assert "pbdummy0" not in ip_links(kernel_netns)


@pytest.mark.parametrize("mode", sorted(IPVLAN_MODES))
def test_ipvlan(kernel_netns: str, mode: str) -> None:
    with NetNS(kernel_netns) as ns:
        parent = add_parent(ns, "pbup0")
        ns.link("add", ifname="pbipv0", kind="ipvlan", link=parent, ipvlan_mode=IPVLAN_MODES[mode])
        link = ip_links(kernel_netns)["pbipv0"]
        kind, data = info(link)
        assert kind == "ipvlan"
        assert data.get("mode") == mode
        assert link.get("link") == "pbup0"
        # ipvlan children share the parent's MAC address (unlike macvlan)
        assert link["address"] == ip_links(kernel_netns)["pbup0"]["address"]
        delete(ns, "pbipv0")
        delete(ns, "pbup0")
    assert not {"pbipv0", "pbup0"} & ip_links(kernel_netns).keys()


def test_ipvlan_mode_belongs_to_the_parent(kernel_netns: str) -> None:
    """Kernel behaviour the ipvlan mode must live with: the mode is per parent ("port"), and the
    last child created sets it for all children of that parent."""
    with NetNS(kernel_netns) as ns:
        parent = add_parent(ns, "pbup0")
        ns.link("add", ifname="pbipv0", kind="ipvlan", link=parent, ipvlan_mode=IPVLAN_MODES["l2"])
        ns.link("add", ifname="pbipv1", kind="ipvlan", link=parent, ipvlan_mode=IPVLAN_MODES["l3"])
        links = ip_links(kernel_netns)
        assert info(links["pbipv0"])[1].get("mode") == "l3"
        assert info(links["pbipv1"])[1].get("mode") == "l3"
        delete(ns, "pbup0")  # deleting the parent removes its ipvlan children
    assert not {"pbipv0", "pbipv1", "pbup0"} & ip_links(kernel_netns).keys()


def test_vlan(kernel_netns: str) -> None:
    with NetNS(kernel_netns) as ns:
        parent = add_parent(ns, "pbup0")
        ns.link("add", ifname="pbup0.100", kind="vlan", link=parent, vlan_id=100)
        link = ip_links(kernel_netns)["pbup0.100"]
        kind, data = info(link)
        assert kind == "vlan"
        assert data.get("id") == 100
        assert data.get("protocol") == "802.1Q"
        assert link.get("link") == "pbup0"
        delete(ns, "pbup0.100")
        delete(ns, "pbup0")
    assert not {"pbup0.100", "pbup0"} & ip_links(kernel_netns).keys()
