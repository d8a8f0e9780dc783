"""A real VM on a `dhcp: true` network (issue 19): the QEMU guest (tests/guest/run-in-vm.sh,
Debian's full kernel) boots with a virtio-net NIC on a tap enslaved to the network's bridge,
gets its address from the network's DHCP server with busybox udhcpc, and pings the gateway and
a container (a namespace ADDed to the same network).

The tap is made by `cni-bridge vm attach`, which also gives the guest's MAC its DHCP entry.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest

from cni_bridge import dhcp
from tests.support import dhcp as client
from tests.support.guest import RUNNER, RUNNER_STATUS, VENV, VM_TIMEOUT, require_guest, run_guest
from tests.support.vmports import Vm

pytestmark = pytest.mark.vm
VM_MAC = "02:5e:00:00:19:01"   # locally administered; the VM's NIC


@dataclass(frozen=True)
class VmPort:
    tap: str
    mac: str
    address: ipaddress.IPv4Interface


@contextlib.contextmanager
def vm_port(vm: Vm, conf: dict[str, Any], mac: str) -> Iterator[VmPort]:
    """`cni-bridge vm attach NETWORK --mac MAC` as an operator runs it (the network's config in
    the test's CNI config dir): a tap on the bridge, its lease and its DHCP entry. Detached at exit."""
    (vm.conf_dir / f"10-{conf['name']}.conflist").write_text(json.dumps(conf))
    port = vm.attach(conf["name"], "--mac", mac)
    try:
        assert dhcp.hosts(conf["name"])[port["tap"]]["mac"] == mac   # the DHCP entry came with the port
        yield VmPort(port["tap"], port["mac"], ipaddress.ip_interface(port["ips"][0]))
    finally:
        vm.detach(conf["name"], port["tap"])
        assert port["tap"] not in dhcp.hosts(conf["name"])


GUEST_SCRIPT = """set -u
modprobe virtio_net
for f in /sys/class/net/*; do [ "$(cat $f/address)" = {mac} ] && IF=$(basename $f); done
echo "GUEST-NIC $IF"
ip link set "$IF" up
busybox udhcpc -i "$IF" -s {script} -t 10 -T 2 -n -q -f -O mtu -O staticroutes || echo GUEST-NO-LEASE
ping -c 3 -W 3 {gateway} >/dev/null && echo GUEST-PING-GATEWAY-OK
ping -c 3 -W 3 {container} >/dev/null && echo GUEST-PING-CONTAINER-OK
exit 0
"""


def test_vm_gets_its_address_by_dhcp_and_reaches_gateway_and_container(cni, netns, tmp_path: Path) -> None:
    require_guest()
    with client.dhcp_network(cni) as conf:
        pod = netns()
        result = cni.add(conf, pod.path).result
        container = ipaddress.ip_interface(result["ips"][0]["address"])
        gateway = result["ips"][0]["gateway"]
        with vm_port(Vm(tmp_path), conf, VM_MAC) as port:
            script = tmp_path / "guest.sh"   # the host's /tmp is readable in the guest
            script.write_text(GUEST_SCRIPT.format(mac=port.mac, script=client.write_script(tmp_path),
                                                  gateway=gateway, container=container.ip))
            env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
            env.update(VM_VENV=str(VENV), VM_TIMEOUT=str(VM_TIMEOUT), VM_CPUS="1", VM_MEM="512M",
                       VM_QEMU_OPTS=f"-netdev tap,id=n0,ifname={port.tap},script=no,downscript=no "
                                    f"-device virtio-net-pci,netdev=n0,mac={port.mac}")
            argv = ["bash", str(RUNNER), "bash", str(script)]
            status, out = run_guest(argv, env)
            print(f"$ VM_QEMU_OPTS={shlex.quote(env['VM_QEMU_OPTS'])} {shlex.join(argv)}\n{out}")
            assert status == 0, RUNNER_STATUS.get(status, f"exit {status}") + "\n" + out[-3000:]
            lease = dict(re.findall(r"^LEASE (\w+)=(.*)$", out, re.M))
            assert f"{lease.get('ip')}/{lease.get('mask')}" == str(port.address), out[-3000:]
            assert lease["router"].strip() == gateway and lease["mtu"].strip() == str(client.MTU)
            assert lease["dns"].strip() == client.NAMESERVER
            assert "GUEST-PING-GATEWAY-OK" in out and "GUEST-PING-CONTAINER-OK" in out, out[-3000:]
        cni.delete(conf, pod.path)
        assert dhcp.hosts(conf["name"]) == {}   # the last port gone: so is the server
