"""The CNI `portMappings` capability, served by pybridge itself (issue 16).

`"capabilities": {"portMappings": true}` in the pybridge plugin's config and the runtime's
`runtimeConfig.portMappings`: a host port reaches a server in the container from an outside
namespace (behind a veth, see tests/support/topology.py), and the container sees the outside
address; 127.0.0.1 from the host works; a host port held by another container is refused and
that ADD leaves nothing behind; DEL and GC remove the mappings; the shared table goes with the
last mapping. The Go portmap plugin in a chain is tested in test_chaining.py.
"""

from __future__ import annotations

import ipaddress
import random
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cni_bridge.firewall.portmap import TABLE
from tests.support.cnitool import CniTool
from tests.support.host import run
from tests.support.netns import Netns
from tests.support.runtime_checks import PYBRIDGE, TestNetwork, bridge_ports, network_factory
from tests.support.session import unique_name
from tests.support.subnets import unique_subnet
from tests.support.topology import Uplink

pytestmark = pytest.mark.timeout(180)

# A TCP server in the container: answers every connection with the peer address it saw.
SERVER = r"""
import socket, sys
family = socket.AF_INET6 if ":" in sys.argv[2] else socket.AF_INET
s = socket.socket(family); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[2], int(sys.argv[1]))); s.listen(8); s.settimeout(90)
print("READY", flush=True)
while True:
    c, peer = s.accept(); c.sendall((peer[0] + "\n").encode()); c.close()
"""
CLIENT = r"""
import socket, sys
try:
    c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)
    print(c.recv(200).decode().strip())
except OSError as exc:
    print("FAILED", exc)
"""
CAPS = {"capabilities": {"portMappings": True}}


@pytest.fixture
def networks(tmp_path: Path) -> Iterator[Callable[..., TestNetwork]]:
    yield from network_factory(tmp_path)


def serve(ns: Netns, port: int, bind: str = "0.0.0.0") -> None:
    proc = ns.popen(sys.executable, "-c", SERVER, str(port), bind)
    line = proc.stdout.readline()
    assert line.strip() == "READY", (line, proc.stderr.read() if proc.poll() is not None else "")


def seen_from(where: Netns | None, host: object, port: int) -> str:
    """The client address the server saw (or 'FAILED ...'); `where` None: the host itself."""
    argv = [sys.executable, "-c", CLIENT, str(host), str(port)]
    return (where.run(*argv, timeout=20) if where is not None else run(argv, timeout=20)).stdout.strip()


def ports_table() -> str:
    proc = run(["nft", "list", "table", "inet", TABLE], check=False)
    return proc.stdout if proc.returncode == 0 else ""


def host_port() -> int:
    return random.randrange(20000, 30000)


def test_add_publishes_and_del_removes(cni: CniTool, netns: Callable[..., Netns], uplink: Uplink,
                                       networks: Callable[..., TestNetwork]) -> None:
    net = networks(impl=PYBRIDGE, ip_masq=True, extra=CAPS)
    ns = netns()
    cid = unique_name("ctr")
    hp, hp_local = host_port(), host_port() + 10000
    mappings = {"portMappings": [{"hostPort": hp, "containerPort": 8080, "protocol": "tcp"},
                                 {"hostPort": hp_local, "containerPort": 8080, "protocol": "tcp",
                                  "hostIP": "127.0.0.1"}]}
    res = cni.add(net.conflist, ns.path, container_id=cid, capability_args=mappings)
    ip = ipaddress.ip_interface(res.result["ips"][0]["address"]).ip
    serve(ns, 8080)
    assert seen_from(uplink.outside, uplink.host_ip, hp) == str(uplink.outside_ip)  # the real client
    assert seen_from(None, uplink.host_ip, hp) == str(uplink.host_ip)
    assert not seen_from(None, "127.0.0.1", hp_local).startswith("FAILED")
    assert seen_from(uplink.outside, uplink.host_ip, hp_local).startswith("FAILED")  # 127.0.0.1 only
    assert seen_from(ns, uplink.host_ip, hp) == str(net.gateway)  # hairpin, masqueraded
    assert f"{ip} . 8080" in ports_table()
    cni.check(net.conflist, ns.path, container_id=cid, capability_args=mappings)

    cni.delete(net.conflist, ns.path, container_id=cid, capability_args=mappings)
    assert net.name not in ports_table() and str(ip) not in ports_table()
    assert bridge_ports(net.bridge) == []


def test_dual_stack_mapping(cni: CniTool, netns: Callable[..., Netns], uplink: Uplink,
                            networks: Callable[..., TestNetwork]) -> None:
    """No hostIP: published on both families the container has; an IPv6 client reaches it."""
    v4, v6 = unique_subnet(4), unique_subnet(6)
    net = networks(impl=PYBRIDGE, ip_masq=True, extra=CAPS, subnet=v4)
    net.conflist["plugins"][0]["ipam"]["ranges"] = [[{"subnet": str(v4)}], [{"subnet": str(v6)}]]
    ns = netns()
    cid = unique_name("ctr")
    hp = host_port()
    caps = {"portMappings": [{"hostPort": hp, "containerPort": 8080}]}
    cni.add(net.conflist, ns.path, container_id=cid, capability_args=caps)
    serve(ns, 8080, "::")
    assert seen_from(uplink.outside, f"{uplink.host_ip}", hp).removeprefix("::ffff:") == str(uplink.outside_ip)
    assert seen_from(uplink.outside, uplink.host_ip6, hp) == str(uplink.outside_ip6)
    cni.delete(net.conflist, ns.path, container_id=cid, capability_args=caps)
    assert net.name not in ports_table()


def test_taken_host_port_is_refused_and_the_add_undone(cni: CniTool, netns: Callable[..., Netns],
                                                       uplink: Uplink,
                                                       networks: Callable[..., TestNetwork]) -> None:
    net1 = networks(impl=PYBRIDGE, ip_masq=True, extra=CAPS)
    net2 = networks(impl=PYBRIDGE, ip_masq=True, extra=CAPS)
    a, b = netns(), netns()
    ida, idb = unique_name("ctr"), unique_name("ctr")
    hp = host_port()
    cni.add(net1.conflist, a.path, container_id=ida,
            capability_args={"portMappings": [{"hostPort": hp, "containerPort": 8080}]})
    caps_b = {"portMappings": [{"hostPort": hp + 1, "containerPort": 8080},
                               {"hostPort": hp, "containerPort": 8080}]}
    failed = cni.add(net2.conflist, b.path, container_id=idb, capability_args=caps_b, raise_on_error=False)
    assert not failed.ok and f"host port {hp}/tcp" in failed.error.msg and "already published" in failed.error.msg
    assert "eth0" not in b.link_names() and bridge_ports(net2.bridge) == [] and net2.leases() == []
    assert str(hp + 1) not in ports_table()
    serve(a, 8080)
    assert seen_from(uplink.outside, uplink.host_ip, hp) == str(uplink.outside_ip)
    cni.delete(net2.conflist, b.path, container_id=idb, capability_args=caps_b)  # the runtime's cleanup
    assert f"tcp . {hp} " in ports_table()  # b's DEL did not touch a's port
    cni.delete(net1.conflist, a.path, container_id=ida)  # without runtimeConfig: capability declared
    assert net1.name not in ports_table()


def test_bad_mapping_is_error_7(cni: CniTool, netns: Callable[..., Netns],
                                networks: Callable[..., TestNetwork]) -> None:
    net = networks(impl=PYBRIDGE, extra=CAPS)
    ns = netns()
    for bad in ({"hostPort": 0, "containerPort": 80}, {"hostPort": 80, "containerPort": 80, "protocol": "icmp"},
                {"hostPort": 80, "containerPort": 80, "hostIP": "nonsense"}):
        res = cni.add(net.conflist, ns.path, container_id=unique_name("ctr"),
                      capability_args={"portMappings": [bad]}, raise_on_error=False)
        assert not res.ok and res.error.code == 7, (bad, res.error)
        assert "eth0" not in ns.link_names() and net.leases() == []


def test_gc_removes_stale_mappings(cni: CniTool, netns: Callable[..., Netns],
                                   networks: Callable[..., TestNetwork]) -> None:
    net = networks(impl=PYBRIDGE, ip_masq=True, extra=CAPS, cni_version="1.1.0")
    keep, gone = netns(), netns()
    idk, idg = unique_name("ctr"), unique_name("ctr")
    hp = host_port()
    cni.add(net.conflist, keep.path, container_id=idk, capability_args={"portMappings": [{"hostPort": hp, "containerPort": 80}]})
    cni.add(net.conflist, gone.path, container_id=idg,
            capability_args={"portMappings": [{"hostPort": hp + 1, "containerPort": 80}]})
    cni.gc(net.conflist, [(idk, "eth0")], delete_stale=False)  # the plugin GC, not a DEL
    table = ports_table()
    assert f"tcp . {hp} " in table and f"tcp . {hp + 1} " not in table
    cni.delete(net.conflist, keep.path, container_id=idk)
    cni.delete(net.conflist, gone.path, container_id=idg)
    assert net.name not in ports_table()


def test_same_host_port_on_different_host_addresses(cni: CniTool, netns: Callable[..., Netns], uplink: Uplink,
                                                    networks: Callable[..., TestNetwork]) -> None:
    """hostIP 127.0.0.1 on one container and the host's address on another, same host port: both
    are published (sockets on one host may share a port on different addresses) and each answers
    for its address. A wildcard binding of that port is refused, and a binding to one address of
    a port bound on every address too: clear errors, the refused ADD leaves nothing behind."""
    net1 = networks(impl=PYBRIDGE, ip_masq=True, extra=CAPS)
    net2 = networks(impl=PYBRIDGE, ip_masq=True, extra=CAPS)
    a, b, c = netns(), netns(), netns()
    ida, idb, idc = unique_name("ctr"), unique_name("ctr"), unique_name("ctr")
    hp, other = random.sample(range(20000, 30000), 2)  # bench/portmap_bench.py fills 30000-30999
    caps_a = {"portMappings": [{"hostPort": hp, "containerPort": 8080, "hostIP": "127.0.0.1"}]}
    caps_b = {"portMappings": [{"hostPort": hp, "containerPort": 8080, "hostIP": str(uplink.host_ip)},
                               {"hostPort": other, "containerPort": 8080}]}
    res_a = cni.add(net1.conflist, a.path, container_id=ida, capability_args=caps_a)
    res_b = cni.add(net2.conflist, b.path, container_id=idb, capability_args=caps_b)
    addr_a, addr_b = (ipaddress.ip_interface(r.result["ips"][0]["address"]).ip for r in (res_a, res_b))
    serve(a, 8080)
    serve(b, 8080)
    table = ports_table()
    assert f"127.0.0.1 . tcp . {hp} " in table and f"{addr_a} . 8080" in table, table
    assert f"{uplink.host_ip} . tcp . {hp} " in table and f"{addr_b} . 8080" in table, table
    assert seen_from(uplink.outside, uplink.host_ip, hp) == str(uplink.outside_ip)  # b, the real client
    assert seen_from(None, uplink.host_ip, hp) == str(uplink.host_ip)  # b, from the host
    assert seen_from(None, "127.0.0.1", hp) == str(net1.gateway)  # a (masqueraded into net1)
    assert seen_from(uplink.outside, "127.0.0.1", hp).startswith("FAILED")

    for caps, holder in (({"portMappings": [{"hostPort": hp, "containerPort": 8080}]}, "single host addresses"),
                         ({"portMappings": [{"hostPort": other, "containerPort": 8080, "hostIP": "127.0.0.1"}]},
                          "on every host address")):
        failed = cni.add(net1.conflist, c.path, container_id=idc, capability_args=caps, raise_on_error=False)
        assert not failed.ok and "already published" in failed.error.msg and holder in failed.error.msg, failed.error
        assert "eth0" not in c.link_names() and [p.name for p in net1.leases()] == [str(addr_a)]
        assert ports_table() == table
        cni.delete(net1.conflist, c.path, container_id=idc, capability_args=caps)  # the runtime's cleanup
        assert ports_table() == table
    cni.delete(net1.conflist, a.path, container_id=ida, capability_args=caps_a)
    assert f"127.0.0.1 . tcp . {hp} " not in ports_table() and f"{uplink.host_ip} . tcp . {hp} " in ports_table()
    cni.add(net1.conflist, c.path, container_id=idc,
            capability_args={"portMappings": [{"hostPort": hp, "containerPort": 8080, "hostIP": "127.0.0.1"}]})
    cni.delete(net1.conflist, c.path, container_id=idc)
    cni.delete(net2.conflist, b.path, container_id=idb, capability_args=caps_b)
    assert ports_table() == ""  # nothing published, no member left: the table went


def test_ipv6_loopback_is_refused(cni: CniTool, netns: Callable[..., Netns],
                                  networks: Callable[..., TestNetwork]) -> None:
    """`[::1]` cannot be DNATed to a container (IPv6 has no route_localnet: the kernel drops a
    packet with a loopback source that leaves lo): a clear error 7 naming the reason, nothing made."""
    v4, v6 = unique_subnet(4), unique_subnet(6)
    net = networks(impl=PYBRIDGE, ip_masq=True, extra=CAPS, subnet=v4)
    net.conflist["plugins"][0]["ipam"]["ranges"] = [[{"subnet": str(v4)}], [{"subnet": str(v6)}]]
    ns = netns()
    res = cni.add(net.conflist, ns.path, container_id=unique_name("ctr"), raise_on_error=False,
                  capability_args={"portMappings": [{"hostPort": host_port(), "containerPort": 80, "hostIP": "::1"}]})
    assert not res.ok and res.error.code == 7 and "[::1]" in res.error.msg and "route_localnet" in res.error.msg
    assert "eth0" not in ns.link_names() and net.leases() == []
