"""A real VM on a pybridge network: the QEMU full-kernel guest (tests/guest/run-in-vm.sh) boots
with its NIC on a tap made by `cni-bridge vm attach`, takes the leased address and MAC the
command printed, and pings the network's gateway and a container attached to the same network
by the CNI plugin. After detach and DEL nothing of the port is left.

The guest is emulated (TCG) on hosts without usable KVM: about a minute. Skipped where the
guest's prerequisites are missing (`bash .ci/vm-setup.sh`), failed instead in CI.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Any, Callable

import pytest

from tests.support.cnitool import CniTool
from tests.support.guest import RUNNER, VENV, VM_TIMEOUT, require_guest, run_guest
from tests.support.host import run
from tests.support.leaks import lease_files
from tests.support.netns import Netns
from tests.support.vmports import Vm, cni_network

pytestmark = pytest.mark.vm

GUEST_MAC = "52:54:00:7e:57:01"


def guest_script(mac: str, address: str, *targets: str) -> str:
    """Inside the guest: the NIC with that MAC up with the leased address, then one ping run per
    target (a reply to any of its 5 requests passes: the first may go before ARP settles)."""
    lines = [f'for d in /sys/class/net/*; do [ "$(cat $d/address)" = {mac} ] && dev=${{d##*/}}; done',
             'echo "guest NIC: $dev"', "ip link set $dev up", f"ip addr add {address} dev $dev"]
    lines += [f"ping -c 5 -i 0.5 {shlex.quote(t)} || exit 1" for t in targets]
    return "; ".join(lines)


def test_a_qemu_guest_on_a_vm_port_reaches_the_gateway_and_a_container(
        tmp_path: Path, cni: CniTool, netns: Callable[..., Netns], own_bridges: list[str]) -> None:
    require_guest()
    vm = Vm(tmp_path)
    conf = cni_network(vm, cni)
    own_bridges.append(conf["plugins"][0]["bridge"])
    port: dict[str, Any] = vm.attach(conf["name"], "--mac", GUEST_MAC)
    ns = netns()
    try:
        container = cni.add(conf, ns.path).result["ips"][0]["address"].split("/")[0]
        qemu = (f"-netdev tap,id=n0,ifname={port['tap']},script=no,downscript=no "
                f"-device virtio-net-pci,netdev=n0,mac={port['mac']}")
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
        env.update(VM_QEMU_OPTS=qemu, VM_VENV=str(VENV), VM_TIMEOUT=str(VM_TIMEOUT), VM_MEM="512M", VM_CPUS="1")
        status, out = run_guest(["bash", str(RUNNER), guest_script(port["mac"], port["ips"][0], port["gateway"],
                                                                     container)], env)
        assert status == 0, f"guest exit {status}:\n{out[-3000:]}"
        assert f"from {port['gateway']}" in out and f"from {container}" in out, out[-3000:]
    finally:
        cni.delete(conf, ns.path)
        vm.detach(conf["name"], port["tap"])
    assert run(["ip", "link", "show", "dev", port["tap"]], check=False).returncode != 0
    assert lease_files(cni.data_dir) == [] and vm.ls() == []
