"""One Docker Engine test's world: its networks and containers on a private dockerd with the
pybridge driver, removed at its end whatever happens, and the checks that nothing is left.

Why here: the Docker engine tests and the Docker restart / reboot tests drive the same scenario
and judge it the same way (bridge, nft table, leases, driver state, FORWARD rules); the `dk`
fixture (tests/runtime/conftest.py) hands one `Scenario` to each test.
"""

from __future__ import annotations

import ipaddress
import subprocess
from dataclasses import dataclass
from pathlib import Path

from cni_bridge.firewall import table_name
from cni_bridge.ipam.lease import parse_lease_name
from tests.support import dockerd as support
from tests.support.host import run
from tests.support.netns import Netns, create_netns
from tests.support.session import unique_name
from tests.support.subnets import OUTSIDE_POOL4, unique_subnet

__all__ = ["Net", "Scenario", "assert_network_gone", "bridge_of", "leased", "link_exists", "link_names",
           "nft_tables", "state_mentions"]


# --- the scenario --------------------------------------------------------------------------------
@dataclass
class Net:
    name: str
    id: str
    bridge: str | None
    subnet: ipaddress.IPv4Network | None


class Scenario:
    """Containers and networks of one test, removed at its end whatever happens."""

    def __init__(self, engine: support.DockerEngine, driver: support.DriverProcess) -> None:
        self.engine, self.driver = engine, driver
        self.containers: list[str] = []
        self.networks: list[Net] = []
        self.namespaces: list[Netns] = []
        self.links: list[str] = []

    def docker(self, *args: str, check: bool = True, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        return self.engine.docker(*args, check=check, timeout=timeout)

    def network(self, *options: str, subnet: bool = True, bridge: bool = True, ipam: bool = True,
                driver: str = "pybridge") -> Net:
        name = unique_name("net")
        args = ["network", "create", "-d", driver]
        if ipam:
            args += ["--ipam-driver", "pybridge"]
        net = ipaddress.ip_network(unique_subnet(4)) if subnet else None
        if net is not None:
            args += ["--subnet", str(net)]
        bridge_name = unique_name("br") if bridge and driver == "pybridge" else None
        if bridge_name:
            args += ["-o", f"com.docker.network.bridge.name={bridge_name}"]
        nid = self.docker(*args, *options, name).stdout.strip()
        made = Net(name, nid, bridge_name, net)
        self.networks.append(made)
        return made

    def run(self, net: Net | str, *args: str, cmd: tuple[str, ...] = ("sleep", "3600")) -> str:
        name = unique_name("c")
        self.containers.append(name)
        network = net.name if isinstance(net, Net) else net
        self.docker("run", "-d", "--init", "--name", name, "--network", network, *args, support.IMAGE, *cmd)
        return name

    def exec(self, container: str, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.docker("exec", container, *cmd, check=check)

    def ping(self, container: str, address: str | ipaddress._BaseAddress, *, count: int = 2) -> bool:
        return self.exec(container, "ping", "-c", str(count), "-W", "2", str(address), check=False).returncode == 0

    def address(self, container: str, net: Net, key: str = "IPAddress") -> str:
        fmt = f'{{{{(index .NetworkSettings.Networks "{net.name}").{key}}}}}'
        return self.docker("inspect", "-f", fmt, container).stdout.strip()

    def outside(self, *, host_address: bool = True) -> tuple[Netns, str, ipaddress.IPv4Network]:
        """An 'outside world' namespace behind a veth whose other end is on dockerd's side."""
        ns = create_netns(unique_name("out"))
        self.namespaces.append(ns)
        subnet = ipaddress.ip_network(unique_subnet(4, 24, pool=str(OUTSIDE_POOL4)))
        host_if = unique_name("up")
        run(["ip", "link", "add", host_if, "type", "veth", "peer", "name", "ext0", "netns", ns.name])
        self.links.append(host_if)
        if self.engine.netns is not None:
            run(["ip", "link", "set", host_if, "netns", self.engine.netns.name])
        if host_address:
            self.engine.host_run("ip", "addr", "add", f"{subnet.network_address + 1}/24", "dev", host_if)
        self.engine.host_run("ip", "link", "set", host_if, "up")
        ns.ip("addr", "add", f"{subnet.network_address + 2}/24", "dev", "ext0")
        ns.ip("link", "set", "ext0", "up")
        return ns, host_if, subnet

    def remove_network(self, net: Net) -> None:
        self.docker("network", "rm", net.name)
        self.networks.remove(net)

    def remove_all_and_check(self, net: Net, bridge: str | None = None) -> None:
        """Remove the containers and `net` the way a user does, then check nothing is left."""
        if self.containers:
            self.docker("rm", "-f", *self.containers)
            self.containers.clear()
        self.remove_network(net)
        assert_network_gone(self, net, bridge)

    def cleanup(self) -> None:
        if self.containers:
            self.docker("rm", "-f", *self.containers, check=False)
        for net in reversed(self.networks):
            self.docker("network", "rm", net.name, check=False)
        for link in self.links:
            self.engine.host_run("ip", "link", "del", link, check=False)
        for ns in self.namespaces:
            ns.delete()


# --- checks --------------------------------------------------------------------------------------
def link_exists(engine: support.DockerEngine, name: str) -> bool:
    return engine.host_run("ip", "link", "show", "dev", name, check=False).returncode == 0


def link_names(engine: support.DockerEngine) -> set[str]:
    return {line.split()[0].split("@")[0] for line in engine.host_run("ip", "-br", "link").stdout.splitlines()}


def nft_tables(engine: support.DockerEngine) -> str:
    return engine.host_run("nft", "list", "tables").stdout


def leased(driver: support.DriverProcess, subnet: ipaddress._BaseNetwork) -> list[Path]:
    out = []
    if driver.ipam_dir.is_dir():
        for path in driver.ipam_dir.rglob("*"):
            address = parse_lease_name(path.name)
            if address is not None and address in subnet:
                out.append(path)
    return out


def state_mentions(driver: support.DriverProcess, text: str) -> list[Path]:
    return [p for p in driver.state_dir.rglob("*.json") if text in p.read_text()]


def assert_network_gone(dk: Scenario, net: Net, bridge: str | None = None) -> None:
    bridge = bridge or net.bridge
    if bridge:
        assert not link_exists(dk.engine, bridge), f"bridge {bridge} still exists"
    assert table_name(net.id) not in nft_tables(dk.engine)
    if net.subnet is not None:
        assert leased(dk.driver, net.subnet) == []
        assert state_mentions(dk.driver, str(net.subnet)) == []
    assert state_mentions(dk.driver, net.id) == []
    rules = dk.engine.host_run("iptables", "-w", "-S", "FORWARD", check=False).stdout
    assert f"pybridge:{net.id}" not in rules


def bridge_of(dk: Scenario, net: Net) -> str:
    return net.bridge or "pbr-" + net.id[:11]
