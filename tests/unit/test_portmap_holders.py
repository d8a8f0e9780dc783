"""Who may hold a host port (firewall/portmap.py `_conflict`), without the kernel: per family and
protocol, one owner per host address; a wildcard binding excludes single-address ones and the
other way round, as sockets on one host."""

from __future__ import annotations

import ipaddress

from cni_bridge.firewall.portmap import PortMapping, _conflict, _ListedHolders, _note_published


def mapping(port: int, host_ip: str | None = None, protocol: str = "tcp", version: int = 4) -> PortMapping:
    container = "10.1.0.2" if version == 4 else "fd00::2"
    return PortMapping(protocol, port, ipaddress.ip_address(container), 80,
                       ipaddress.ip_address(host_ip) if host_ip else None)


def holders(*published: tuple[PortMapping, str]) -> _ListedHolders:
    h = _ListedHolders({})
    for m, owner in published:
        _note_published(h, m, owner)
    return h


def test_single_addresses_share_a_port() -> None:
    h = holders((mapping(8080, "127.0.0.1"), "net/a"))
    assert _conflict(h, mapping(8080, "10.0.0.1"), "net/b") is None
    assert "attachment a" in _conflict(h, mapping(8080, "127.0.0.1"), "net/b")
    assert _conflict(h, mapping(8080, "127.0.0.1"), "net/a") is None  # a repeated request


def test_wildcard_and_single_address_exclude_each_other() -> None:
    h = holders((mapping(8080, "127.0.0.1"), "net/a"), (mapping(8080, "10.0.0.1"), "net/c"))
    assert _conflict(h, mapping(8080), "net/b") == "bindings to single host addresses"
    h = holders((mapping(8080), "net/a"))
    assert "on every host address" in _conflict(h, mapping(8080, "127.0.0.1"), "net/b")
    assert "attachment a" in _conflict(h, mapping(8080), "net/b")
    assert _conflict(h, mapping(8080), "net/a") is None


def test_other_family_and_protocol_are_independent() -> None:
    h = holders((mapping(8080), "net/a"), (mapping(9090, "127.0.0.1"), "net/a"))
    assert _conflict(h, mapping(8080, version=6), "net/b") is None
    assert _conflict(h, mapping(8080, protocol="udp"), "net/b") is None
    assert _conflict(h, mapping(9090, "2001:db8::1", version=6), "net/b") is None


def test_counts_of_single_address_bindings() -> None:
    h = holders((mapping(8080, "127.0.0.1"), "net/a"), (mapping(8080, "10.0.0.1"), "net/b"))
    assert h.taken(mapping(8080)) == "*2"
