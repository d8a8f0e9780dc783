"""Issue 8: a `pybridge` ADD killed by SIGKILL after any step leaves nothing DEL or GC cannot undo.

The hook (cni_bridge/crashpoint.py): with PYBRIDGE_CRASH_AFTER=N the exec'd plugin kills itself
right after the N-th step it reports and names that step on stderr. A trace run
(PYBRIDGE_CRASH_TRACE=1) lists the steps of one ADD; then for every N the test:

  1. snapshots the host (links, addresses, routes, nft ruleset, iptables, the IPAM dataDir),
  2. runs ADD with PYBRIDGE_CRASH_AFTER=N and checks it died by SIGKILL after step N,
  3. cleans up the way a runtime would: DEL (or, in the GC variants, CNI GC without the
     attachment among the valid ones; or DEL after the runtime already deleted the netns),
  4. snapshots again: it must equal the first one, line for line,
  5. and a normal ADD of the same container still works (no stale name, lease or lock blocks it;
     after GC in a new sandbox: GC cannot reach into the old one).

The network-wide parts (bridge, gateway address, ip_forward) exist before the crash loop: a
warm-up ADD/DEL makes them, as on any host where the network is in use. One variant starts
from a host without the bridge and checks that only those network-wide parts remain.
The `last_reserved.*` files are allocation cursors (host-local keeps them too), not leases:
they are allowed to move.
"""

from __future__ import annotations

import random
import re
import shutil
import signal
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cni_bridge.attachment import Attachment
from cni_bridge.modes.sublink import temp_name
from tests.support import hostsnap
from tests.support.cnitool import CniTool, PluginCall
from tests.support.daemon import fastpath_daemon
from tests.support.host import run
from tests.support.netns import Netns
from tests.support.session import unique_name
from tests.support.subnets import unique_subnet
from tests.support.topology import Uplink

CRASH_LINE = re.compile(r"pybridge crashpoint: (\d+) (\S+)")
TRACE_LINE = re.compile(r"pybridge crashpoint trace: (\d+) (\S+)")
CURSOR_FILES = r"/last_reserved\.\d+ = "

# Steps every bridge ADD must report (more may exist: one per address and route).
BRIDGE_STEPS = {"ipam-owner-file", "ipam-lease-file", "ipam-hints", "bridge", "bridge-mac-pinned",
                "gateway-address", "ip-forward-sysctl", "veth-into-netns", "container-address",
                "container-link-up", "container-route", "masquerade", "result-ready"}
SHAPING_STEPS = {"ifb", "ifb-tbf", "ingress-redirect", "veth-tbf"}
DHCP_STEPS = {"dhcp-server-address", "dhcp-network-recorded", "dhcp-host-added", "dhcp-netns", "dhcp-veth",
              "dnsmasq-started"}
MACVLAN_STEPS = {"ipam-owner-file", "ipam-lease-file", "ipam-hints", "macvlan-created",
                 "macvlan-moved-into-netns", "arp-notify-sysctl", "container-address",
                 "container-link-up", "result-ready"}
TAP_STEPS = {"ipam-owner-file", "ipam-lease-file", "ipam-hints", "bridge", "bridge-mac-pinned",
             "gateway-address", "ip-forward-sysctl", "veth-into-netns", "tap-created", "container-link-up",
             "tc-redirect", "masquerade", "result-ready"}
MACVTAP_STEPS = {step.replace("macvlan", "macvtap") for step in MACVLAN_STEPS}


# ----- helpers -----------------------------------------------------------------------------
def bridge_conflist(data_dir: Path, *, dual_stack: bool = False, hairpin: bool = False,
                    bandwidth: dict[str, int] | None = None, mode: str = "bridge", dhcp: bool = False) -> dict[str, Any]:
    ranges = [[{"subnet": str(unique_subnet(4, 24))}]]
    if dual_stack:
        ranges.append([{"subnet": str(unique_subnet(6, 64))}])
    plugin = {"type": "pybridge", "mode": mode, "bridge": unique_name("br"), "isGateway": True,
              "isDefaultGateway": True, "ipMasq": True, "hairpinMode": hairpin, "dhcp": dhcp,
              "ipam": {"type": "pybridge-ipam", "ranges": ranges, "dataDir": str(data_dir)}}
    if bandwidth:
        plugin["bandwidth"] = bandwidth
    return {"cniVersion": "1.1.0", "name": unique_name("net"), "plugins": [plugin]}


def macvlan_conflist(data_dir: Path, uplink: Uplink, mode: str = "macvlan") -> dict[str, Any]:
    net = uplink.subnet
    plugin = {"type": "pybridge", "mode": mode, "master": uplink.host_if,
              "ipam": {"type": "pybridge-ipam", "dataDir": str(data_dir),
                       "ranges": [[{"subnet": str(net), "rangeStart": str(net.network_address + 10),
                                    "gateway": str(uplink.outside_ip)}]],
                       "routes": [{"dst": "0.0.0.0/0"}]}}
    return {"cniVersion": "1.1.0", "name": unique_name("net"), "plugins": [plugin]}


def traced_steps(cni: CniTool, conf: dict[str, Any], ns: Netns, cid: str) -> list[str]:
    """The steps of one successful ADD, in order (the run also warms the network up)."""
    tracer = CniTool(cni.cache_dir, env={"PYBRIDGE_CRASH_TRACE": "1"}, data_dir=cni.data_dir)
    run_ = tracer.add(conf, ns.path, container_id=cid)
    steps = [m.group(2) for m in TRACE_LINE.finditer(run_.calls[-1].stderr)]
    cni.delete(conf, ns.path, container_id=cid)
    return steps


def crash_add(cni: CniTool, conf: dict[str, Any], ns: Netns, cid: str, n: int) -> str:
    """ADD that must die by SIGKILL right after step `n`; returns that step's name."""
    crasher = CniTool(cni.cache_dir, env={"PYBRIDGE_CRASH_AFTER": str(n)}, data_dir=cni.data_dir)
    call: PluginCall = crasher.add(conf, ns.path, container_id=cid, raise_on_error=False).calls[-1]
    assert call.exit_code == -signal.SIGKILL, f"step {n}: ADD did not crash: {call.exit_code} {call.stderr}"
    assert call.stdout == "", "a killed plugin printed a result"
    found = CRASH_LINE.search(call.stderr)
    assert found and int(found.group(1)) == n, call.stderr
    return found.group(2)


def owned(cni: CniTool, cid: str, *names: str) -> list[str]:
    """What this test may have touched: the session's prefix and subnets, the dataDir, the
    attachment's derived link names."""
    att = Attachment(cid, "eth0", None)
    return hostsnap.mine(cni.data_dir, att.host_ifname, temp_name(att), att.ifb_ifname, *names)


def snap(cni: CniTool) -> hostsnap.HostSnapshot:
    return hostsnap.snapshot([cni.data_dir])


def assert_restored(before: hostsnap.HostSnapshot, cni: CniTool, cid: str, what: str) -> None:
    differences = hostsnap.diff(before, snap(cni), only=owned(cni, cid), ignore=[CURSOR_FILES])
    assert not differences, f"{what}: host not restored:\n  " + "\n  ".join(differences)


def gc_without(cni: CniTool, conf: dict[str, Any], cid: str) -> None:
    """CNI GC by a runtime to whom the crashed container does not exist (keeps a bystander)."""
    cni.gc(conf, [("bystander", "eth0")])


Cleanup = Callable[[CniTool, dict[str, Any], Netns, str], None]


def cleanup_by_del(cni: CniTool, conf: dict[str, Any], ns: Netns, cid: str) -> None:
    cni.delete(conf, ns.path, container_id=cid)


def cleanup_by_gc(cni: CniTool, conf: dict[str, Any], ns: Netns, cid: str) -> None:
    gc_without(cni, conf, cid)


# GC has no netns: what a link mode already moved into the sandbox stays there until the sandbox
# goes (the runtime that forgot the container will not reuse that sandbox). Retry in a new one.
cleanup_by_gc.keeps_sandbox_state = True  # type: ignore[attr-defined]


def crash_every_step(cni: CniTool, conf: dict[str, Any], make_ns: Callable[[], Netns],
                     expected: set[str], cleanup: Cleanup,
                     also_gone: Callable[[str], None] = lambda what: None) -> list[str]:
    """The loop of the module docstring; returns the names of the steps crashed at.
    `also_gone(what)`: checks of state outside the host snapshot, after each clean-up."""
    warm = make_ns()
    steps = traced_steps(cni, conf, warm, "warmup")
    assert expected <= set(steps), f"steps missing from the trace: {expected - set(steps)}"
    crashed = []
    for n in range(1, len(steps) + 1):
        ns = make_ns()
        cid = f"crash{n}"
        before = snap(cni)
        crashed.append(crash_add(cni, conf, ns, cid, n))
        cleanup(cni, conf, ns, cid)
        assert_restored(before, cni, cid, f"crash after step {n} ({crashed[-1]}), {cleanup.__name__}")
        also_gone(f"crash after step {n} ({crashed[-1]}), {cleanup.__name__}")
        if getattr(cleanup, "keeps_sandbox_state", False):
            ns.delete()
            ns = make_ns()
        result = cni.add(conf, ns.path, container_id=cid).result  # the runtime's retry works
        assert result["ips"], result
        cni.delete(conf, ns.path, container_id=cid)
        ns.delete()
    assert crashed == steps
    return crashed


# ----- fixtures ----------------------------------------------------------------------------
def network(cni: CniTool, own_bridges: list[str], **kw: Any) -> dict[str, Any]:
    conf = bridge_conflist(cni.data_dir, **kw)
    own_bridges.append(conf["plugins"][0]["bridge"])
    return conf


# ----- tests -------------------------------------------------------------------------------
@pytest.mark.parametrize("cleanup", [cleanup_by_del, cleanup_by_gc], ids=["DEL", "GC"])
def test_bridge_add_crash_at_every_step_is_undone(cni, netns, own_bridges, cleanup):
    conf = network(cni, own_bridges)
    crash_every_step(cni, conf, netns, BRIDGE_STEPS, cleanup)


@pytest.mark.parametrize("cleanup", [cleanup_by_del, cleanup_by_gc], ids=["DEL", "GC"])
def test_shaped_bridge_add_crash_at_every_step_is_undone(cni, netns, own_bridges, cleanup):
    """Bandwidth limits in both directions: the ifb, its tbf, the redirect, the veth's tbf."""
    conf = network(cni, own_bridges, bandwidth={"ingressRate": 10_000_000, "ingressBurst": 256_000,
                                                "egressRate": 10_000_000, "egressBurst": 256_000})
    crash_every_step(cni, conf, netns, BRIDGE_STEPS | SHAPING_STEPS, cleanup)


@pytest.mark.parametrize("cleanup", [cleanup_by_del, cleanup_by_gc], ids=["DEL", "GC"])
def test_dhcp_network_add_crash_at_every_step_is_undone(cni, netns, own_bridges, cleanup):
    """A `dhcp: true` network whose first member crashes at every step, the DHCP server's among
    them: DEL or GC leaves no server process, namespace, veth, run files or server address."""
    from cni_bridge.dhcp import dnsmasq
    from cni_bridge.dhcp.files import netns_name, network_dir, veth_name
    conf = network(cni, own_bridges, dhcp=True)
    name = conf["name"]

    def server_gone(what: str) -> None:
        left = [thing for thing, there in (
            ("dnsmasq", dnsmasq.pids(network_dir(name))),
            ("namespace", Path("/run/netns", netns_name(name)).exists()),
            ("veth", run(["ip", "link", "show", veth_name(name)], check=False).returncode == 0),
            ("run directory", network_dir(name).exists())) if there]
        assert not left, f"{what}: the DHCP server's {', '.join(left)} left"

    crash_every_step(cni, conf, netns, BRIDGE_STEPS | DHCP_STEPS, cleanup, server_gone)


@pytest.mark.parametrize("cleanup", [cleanup_by_del, cleanup_by_gc], ids=["DEL", "GC"])
def test_published_port_add_crash_at_every_step_is_undone(cni, netns, own_bridges, cleanup):
    """With a published port (the portMappings capability): its steps too; DEL (with the same
    runtimeConfig) or GC leaves the host as before, the shared ports table included."""
    conf = network(cni, own_bridges)
    conf["plugins"][0]["capabilities"] = {"portMappings": True}
    conf["plugins"][0]["runtimeConfig"] = {"portMappings": [{"hostPort": random.randrange(20000, 30000),
                                                             "containerPort": 80}]}
    crash_every_step(cni, conf, netns, BRIDGE_STEPS | {"ports-published", "ports-hairpin"}, cleanup)


def test_dual_stack_hairpin_add_crash_at_every_step_is_undone_by_del(cni, netns, own_bridges):
    """Two addresses, two default routes, IPv6 forwarding and hairpin: more steps, same promise."""
    conf = network(cni, own_bridges, dual_stack=True, hairpin=True)
    crashed = crash_every_step(cni, conf, netns, BRIDGE_STEPS | {"hairpin"}, cleanup_by_del)
    assert crashed.count("container-address") == 2 and crashed.count("ipam-lease-file") == 2


def test_bridge_crash_then_netns_deleted_then_del(cni, netns, own_bridges):
    """The runtime gives up on the sandbox first (netns gone), then DELs: still a clean host."""
    conf = network(cni, own_bridges)
    steps = traced_steps(cni, conf, netns(), "warmup")
    for n in range(1, len(steps) + 1):
        ns, cid = netns(), f"gone{n}"
        before = snap(cni)
        crash_add(cni, conf, ns, cid, n)
        path = ns.path
        ns.delete()
        cni.delete(conf, path, container_id=cid)
        assert_restored(before, cni, cid, f"crash after step {n}, netns deleted, DEL")


def test_crash_on_a_fresh_host_leaves_only_the_network_parts(cni, netns, own_bridges):
    """No warm-up: a crash during the very first ADD, then DEL, leaves what the Go bridge plugin
    also leaves after a DEL (bridge, its gateway address and connected route, nothing else):
    no veth, no lease, no masquerade table."""
    conf = network(cni, own_bridges)
    bridge = conf["plugins"][0]["bridge"]
    steps = traced_steps(cni, conf, netns(), "probe")
    for n in range(1, len(steps) + 1):
        run(["ip", "link", "del", bridge], check=False)
        ns, cid = netns(), f"fresh{n}"
        before = snap(cni)
        name = crash_add(cni, conf, ns, cid, n)
        cni.delete(conf, ns.path, container_id=cid)
        network_parts = [rf"^links: \+ {bridge} ", rf"^addresses: \+ {bridge} ", rf"dev {bridge} "]
        differences = [d for d in hostsnap.diff(before, snap(cni), only=owned(cni, cid),
                                                ignore=[CURSOR_FILES])
                       if not any(re.search(p, d) for p in network_parts)]
        assert not differences, f"crash after step {n} ({name}):\n  " + "\n  ".join(differences)


@pytest.mark.parametrize("cleanup", [cleanup_by_del, cleanup_by_gc], ids=["DEL", "GC"])
def test_macvlan_add_crash_at_every_step_is_undone(cni, netns, uplink, cleanup):
    """Link modes create the child in the host namespace under a derived temporary name and
    then move it: a crash between the two leaves a link that DEL and GC must find by name."""
    conf = macvlan_conflist(cni.data_dir, uplink)
    crash_every_step(cni, conf, netns, MACVLAN_STEPS, cleanup)


@pytest.mark.parametrize("cleanup", [cleanup_by_del, cleanup_by_gc], ids=["DEL", "GC"])
def test_tap_add_crash_at_every_step_is_undone(cni, netns, own_bridges, cleanup):
    """tap mode: the bridge attachment's steps, then the tap and the redirects in the sandbox."""
    conf = network(cni, own_bridges, mode="tap")
    crash_every_step(cni, conf, netns, TAP_STEPS, cleanup)


@pytest.mark.parametrize("cleanup", [cleanup_by_del, cleanup_by_gc], ids=["DEL", "GC"])
def test_macvtap_add_crash_at_every_step_is_undone(cni, netns, uplink, cleanup):
    conf = macvlan_conflist(cni.data_dir, uplink, mode="macvtap")
    crash_every_step(cni, conf, netns, MACVTAP_STEPS, cleanup)


def test_del_crash_at_every_step_then_del_again(cni, netns, own_bridges):
    """A DEL killed half-way (veth gone but lease kept, lease gone but owner index kept, ...)
    is finished by the runtime's next DEL."""
    conf = network(cni, own_bridges)
    warm = netns()
    cni.add(conf, warm.path, container_id="warmup")
    tracer = CniTool(cni.cache_dir, env={"PYBRIDGE_CRASH_TRACE": "1"}, data_dir=cni.data_dir)
    traced = tracer.delete(conf, warm.path, container_id="warmup").calls[-1].stderr
    steps = [m.group(2) for m in TRACE_LINE.finditer(traced)]
    assert {"host-veth-deleted", "masquerade-removed", "ipam-lease-released", "ipam-owner-released"} <= set(steps)
    for n in range(1, len(steps) + 1):
        ns, cid = netns(), f"del{n}"
        before = snap(cni)
        cni.add(conf, ns.path, container_id=cid)
        crasher = CniTool(cni.cache_dir, env={"PYBRIDGE_CRASH_AFTER": str(n)}, data_dir=cni.data_dir)
        call = crasher.delete(conf, ns.path, container_id=cid, raise_on_error=False).calls[-1]
        assert call.exit_code == -signal.SIGKILL and CRASH_LINE.search(call.stderr), call.stderr
        cni.delete(conf, ns.path, container_id=cid)
        assert_restored(before, cni, cid, f"DEL crashed after step {n} ({steps[n - 1]}), DEL again")


def test_daemon_killed_during_add_then_del(cni, netns, own_bridges, request):
    """The warm path: the daemon itself dies after step N of a forwarded ADD. The plugin
    answers 11 (try again: the daemon may have done part of it), never runs it a second time;
    the runtime's DEL (done in-process, the daemon is gone) restores the host."""
    conf = network(cni, own_bridges)
    steps = traced_steps(cni, conf, netns(), "warmup")
    for n in range(1, len(steps) + 1):
        ns, cid = netns(), f"daemon{n}"
        before = snap(cni)
        base = Path(tempfile.mkdtemp(prefix="pbcd"))  # unix socket paths must stay short
        request.addfinalizer(lambda base=base: shutil.rmtree(base, ignore_errors=True))
        with fastpath_daemon(base, {"PYBRIDGE_CRASH_AFTER": str(n)}) as (path, run_dir, proc):
            client = CniTool(cni.cache_dir, data_dir=cni.data_dir,
                             env={"PYBRIDGE_FASTPATH_SOCKET": path, "PYBRIDGE_RUN_DIR": run_dir})
            call = client.add(conf, ns.path, container_id=cid, raise_on_error=False).calls[-1]
            assert proc.wait(30) == -signal.SIGKILL, f"step {n}: the daemon did not crash"
            assert call.exit_code != 0 and call.output["code"] == 11, call.stdout
        client.delete(conf, ns.path, container_id=cid)
        assert_restored(before, cni, cid, f"daemon crashed after step {n} ({steps[n - 1]}), DEL")
