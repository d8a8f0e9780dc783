"""Executes one CNI request for `pybridge` or `pybridge-ipam` and renders stdout + exit code.

Pure with respect to the process: no sys.exit, no printing. The exec'd client calls it in-process
when the daemon is absent and the daemon calls it for forwarded requests, so both paths produce
byte-identical output.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import sys
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from cni_bridge import validate
from cni_bridge.cni import ipam_client
from cni_bridge.cni.protocol import CniRequest, dumps, error_object, error_version, parse_request, version_object
from cni_bridge.crashpoint import step
from cni_bridge.errors import INTERNAL, INVALID_CONFIG, TRY_AGAIN, PluginError, shown

PLUGIN = "pybridge"
IPAM_PLUGIN = "pybridge-ipam"


@dataclass
class Response:
    stdout: bytes
    exit_code: int
    log: str  # one line for stderr


def handle(plugin: str, env: Mapping[str, str], stdin: bytes, *,
           caller_gone: Callable[[], bool] | None = None) -> Response:
    """`env`: the caller's whole environment (CNI_* parameters; the rest is passed on to a
    delegated IPAM plugin). `caller_gone`: the daemon's probe for a client that went away."""
    started = time.monotonic()
    req: CniRequest | None = None
    version = "1.1.0"
    try:
        req = parse_request(env, stdin)
        req.caller_gone = caller_gone
        version = req.version
        if req.command == "VERSION":
            out: dict[str, Any] | None = version_object(req.config)
        else:
            commands = MAIN_COMMANDS if plugin == PLUGIN else IPAM_COMMANDS
            out = commands[req.command](req)
        response = Response(dumps(out) if out is not None else b"", 0, "ok")
    except PluginError as exc:
        if req is None:
            version = error_version(stdin)
        response = Response(dumps(error_object(exc, version)), 1, f"error {exc.code}: {exc}")
    except Exception as exc:  # a bug: still a spec-shaped error, the traceback goes to the log
        wrapped = PluginError(INTERNAL, f"internal error: {exc.__class__.__name__}: {exc}")
        response = Response(dumps(error_object(wrapped, version)), 1,
                            "internal error\n" + traceback.format_exc())
    elapsed = (time.monotonic() - started) * 1000
    who = ""
    if req is not None and req.command not in ("VERSION",):
        who = f" net={req.config.get('name')}"
        if req.container_id:
            who += f" id={req.container_id[:12]} if={req.ifname}"
    command = req.command if req else env.get("CNI_COMMAND", "?")
    response.log = f"{plugin} {command}{who} {elapsed:.1f}ms {response.log}"
    return response


# --- pybridge ----------------------------------------------------------------------------------
# Imports marked "lazy" stay in the functions: the exec'd plugin runs this module in-process when
# the daemon is absent, and VERSION or pybridge-ipam must not pay for the main plugin's modules
# (the modes import pyroute2, ~140 ms).
def _spec(req: CniRequest, *, lenient: bool = False):
    """The network's spec, with the runtime's runtimeConfig.bandwidth in place of the network's
    `bandwidth` when it passes one (shaping.py). `lenient` (DEL): a bad or misplaced
    runtimeConfig.bandwidth only means "remove whatever shaping there is"."""
    from cni_bridge.config import parse_network  # lazy
    spec = parse_network(req.config)
    if "bandwidth" not in req.runtime_config() and "capabilities" not in req.config:
        return spec
    from cni_bridge import shaping  # lazy: config.py has loaded it already
    try:
        bandwidth = shaping.effective(spec.bandwidth, req.config, spec.mtu)
        shaping.require_bridge(spec.mode, bandwidth)
    except PluginError:
        if not lenient:
            raise
        bandwidth = shaping.Bandwidth()
    return spec if bandwidth is spec.bandwidth else dataclasses.replace(spec, bandwidth=bandwidth)


def _attachment(req: CniRequest):
    from cni_bridge.attachment import Attachment  # lazy
    mac = req.runtime_config().get("mac") or req.args.get("MAC") or None
    if mac is not None:
        validate_mac(mac)
    return Attachment(req.container_id, req.ifname, req.netns or None, mac)


def validate_mac(mac: object) -> str:
    if not isinstance(mac, str) or not re.fullmatch(r"(?:[0-9A-Fa-f]{2}:){5}[0-9A-Fa-f]{2}", mac):
        raise PluginError(INVALID_CONFIG, f"invalid MAC address {shown(mac)}")
    if int(mac[:2], 16) & 1:
        raise PluginError(INVALID_CONFIG, f"MAC address {mac} is a multicast address")
    return mac


def _prev(req: CniRequest) -> dict[str, Any] | None:
    prev = req.config.get("prevResult")
    if prev is None:
        return None
    if not isinstance(prev, dict):
        raise PluginError(INVALID_CONFIG, "prevResult must be a JSON object")
    return prev


def _checked_prev(req: CniRequest) -> dict[str, Any] | None:
    """ADD and CHECK use prevResult's fields: a malformed one is error 7 before any work (DEL
    stays lenient: it must clean up whatever prevResult looks like)."""
    from cni_bridge.cni.versions import check_result  # lazy
    prev = _prev(req)
    return None if prev is None else check_result(prev, "prevResult")


def cmd_add(req: CniRequest) -> dict[str, Any]:
    from cni_bridge import modes  # lazy
    from cni_bridge.locks import attachment_lock  # lazy
    spec = _spec(req)
    att = _attachment(req)
    prev = _checked_prev(req)
    driver = modes.driver(spec.mode)
    validate.netns_present(req.netns)
    if spec.dhcp:
        from cni_bridge import dhcp  # lazy: only dhcp networks
        dhcp.for_cni(req.config)  # refuse an IPAM the server cannot lease from before any work
    with attachment_lock(spec.name, att.container_id, att.ifname):
        return _add(req, spec, att, prev, driver)


def _add(req: CniRequest, spec, att, prev: dict[str, Any] | None, driver) -> dict[str, Any]:
    """ADD under the attachment's lock. The mode runs IPAM (`lease`) only after it has checked
    that the container has no interface of that name, so what a failure undoes is this ADD's
    own: the interface did not exist, and no other ADD or DEL of it runs meanwhile."""
    from cni_bridge.attachment import Addressing  # lazy
    from cni_bridge.cni.versions import convert, merge_prev  # lazy
    ipam_asked = False

    def lease() -> Addressing:
        nonlocal ipam_asked
        ipam_asked = True  # from here, whatever IPAM holds for this attachment is ours to undo
        addressing = Addressing.from_result(ipam_client.add(req))
        if not addressing.dns and spec.dns:
            addressing.dns = dict(spec.dns)
        return addressing

    result = None
    dhcp_asked = False
    port_requests = req.runtime_config().get("portMappings")
    try:
        result = driver.add(spec, att, lease, prev) if getattr(driver, "USES_PREV_RESULT", False) \
            else driver.add(spec, att, lease)
        if port_requests:
            from cni_bridge.cni import ports  # lazy: only ADDs that publish ports load it
            ports.publish(spec, att, result, ports.requested(req.config))
        if spec.dhcp:
            dhcp_asked = True
            _dhcp_add(req, spec, att, result)
        converted = convert(merge_prev(prev, result), req.version)
        if req.caller_gone is not None and req.caller_gone():
            # The runtime killed its exec'd plugin: nobody will read this result, and the
            # runtime will not DEL what it never learnt about. Undo it before answering.
            raise PluginError(TRY_AGAIN, "the runtime went away before it got the result; the ADD was undone",
                              "the exec'd plugin's connection to the daemon closed during the ADD")
    except BaseException as exc:
        if dhcp_asked:
            _undo_dhcp(spec, att)
        if port_requests and result is not None:
            _undo_ports(spec, att)
        # A lease store that did not answer (etcd without quorum) would not answer the release
        # either: asking again would double the time to the error. Whatever its lost answer may
        # have written is this attachment's, freed by the runtime's DEL or by GC.
        _undo_add(req, spec, att, driver, result, ipam_asked and not getattr(exc, "store_unreachable", False))
        raise
    step("result-ready")
    return converted


def _undo_add(req: CniRequest, spec, att, driver, result: dict[str, Any] | None, ipam_asked: bool) -> None:
    """Best effort; keeps the original error and says on stderr what could not be undone."""
    from cni_bridge.attachment import Addressing  # lazy
    if result is not None:  # the mode finished: its own undo did not run
        try:
            driver.delete(spec, att, Addressing.from_result(result).addresses())
        except Exception as exc:
            print(f"pybridge: removing the interface after a failed ADD failed: {exc}", file=sys.stderr)
    if ipam_asked:
        try:
            ipam_client.delete(req)
        except Exception as exc:
            print(f"pybridge: releasing the address after a failed ADD failed: {exc}", file=sys.stderr)


def _undo_ports(spec, att) -> None:
    from cni_bridge.cni import ports  # lazy
    try:
        ports.unpublish(spec, att)
    except Exception as exc:
        print(f"pybridge: removing the published ports after a failed ADD failed: {exc}", file=sys.stderr)


def _dhcp_add(req: CniRequest, spec, att, result: dict[str, Any]) -> None:
    """The network's DHCP server learns the container's MAC and IPv4 address (the container
    itself is configured statically; the entry gives a DHCP client with that MAC the same
    address). Keyed by the host veth name, which DEL derives without the netns."""
    from cni_bridge import dhcp  # lazy: only dhcp networks
    from cni_bridge.attachment import Addressing  # lazy
    addressing = Addressing.from_result(result)
    info, ip = dhcp.network_info(spec, addressing), dhcp.ipv4_of(addressing)
    if info is None or ip is None:
        return
    entry = next((e for e in result.get("ips", []) if e.get("address") == str(ip.address)), {})
    interfaces = result.get("interfaces") or []
    index = entry.get("interface")
    mac = interfaces[index].get("mac") if isinstance(index, int) and 0 <= index < len(interfaces) else att.mac
    if not mac:
        raise PluginError(INTERNAL, "dhcp: the container interface's MAC is unknown")
    dhcp.add_host(info, att.host_ifname, mac, ip.address.ip, dhcp.for_cni(req.config))


def _undo_dhcp(spec, att) -> None:
    from cni_bridge import dhcp  # lazy
    try:
        dhcp.remove_host(spec.name, att.host_ifname)
    except Exception as exc:
        print(f"pybridge: removing the DHCP entry after a failed ADD failed: {exc}", file=sys.stderr)


def _ports_involved(req: CniRequest) -> bool:
    """DEL, CHECK and GC look at published ports only when the config declares the
    portMappings capability or the runtime passed mappings (others never load the module)."""
    capabilities = req.config.get("capabilities")
    return bool(req.runtime_config().get("portMappings")) or \
        (isinstance(capabilities, dict) and capabilities.get("portMappings") is True)


def _port_entries(req: CniRequest) -> list:
    entries = req.runtime_config().get("portMappings")
    return entries if isinstance(entries, list) and all(isinstance(e, dict) for e in entries) else []


def _addresses_to_release(req: CniRequest) -> tuple[list, PluginError | None]:
    """The attachment's addresses (store and prevResult), and the store's error 11 if it did not
    answer (etcd without quorum): DEL then still removes the host's side, by name and from
    prevResult, and answers that error afterwards, so that the runtime repeats the DEL (or GC
    frees the lease) and no kernel object is left behind."""
    from cni_bridge.attachment import Addressing  # lazy
    unanswered = None
    try:
        found = list(ipam_client.leased_addresses(req))
    except PluginError as exc:
        if exc.code != TRY_AGAIN:
            raise
        found, unanswered = [], exc
    prev = _prev(req)
    if prev:
        try:
            found += [a for a in Addressing.from_result(prev).addresses() if a not in found]
        except PluginError:
            pass
    return found, unanswered


def cmd_del(req: CniRequest) -> None:
    from cni_bridge import modes  # lazy
    from cni_bridge.locks import attachment_lock  # lazy
    spec = _spec(req, lenient=True)
    att = _attachment(req)
    if att.netns and not validate.could_be_netns(att.netns):
        # DEL succeeds without the namespace; a path that cannot be one is never opened (a FIFO
        # would block the plugin forever).
        att = dataclasses.replace(att, netns=None)
    driver = modes.driver(spec.mode)
    with attachment_lock(spec.name, att.container_id, att.ifname):  # after an ADD still running
        if _ports_involved(req):
            from cni_bridge.cni import ports  # lazy
            ports.unpublish(spec, att, _port_entries(req))
        addresses, unanswered = _addresses_to_release(req)
        driver.delete(spec, att, addresses)
        if spec.dhcp:
            from cni_bridge import dhcp  # lazy: only dhcp networks
            dhcp.remove_host(spec.name, att.host_ifname)
        if unanswered is not None:
            raise unanswered  # the store will not answer the release either: the runtime retries
        ipam_client.delete(req)
    return None


def cmd_check(req: CniRequest) -> None:
    from cni_bridge import modes  # lazy
    spec = _spec(req)
    prev = _checked_prev(req)
    if prev is None:
        raise PluginError(INVALID_CONFIG, "CHECK needs prevResult (the result of ADD)")
    att = _attachment(req)
    driver = modes.driver(spec.mode)
    validate.netns_present(req.netns)
    driver.check(spec, att, prev)
    if spec.dhcp and any(ip.get("address", "").count(".") == 3 for ip in prev.get("ips", [])):
        from cni_bridge import dhcp  # lazy: only dhcp networks
        dhcp.check_host(spec.name, att.host_ifname)
    if req.runtime_config().get("portMappings"):
        from cni_bridge.cni import ports  # lazy
        ports.check(spec, att, prev, ports.requested(req.config))
    ipam_client.check(req)
    return None


def cmd_gc(req: CniRequest) -> None:
    """Spec 1.1 GC: release leases, host veths and masquerade entries of attachments that are not
    in cni.dev/valid-attachments. An absent key means: release nothing."""
    from cni_bridge import modes  # lazy
    from cni_bridge.attachment import Attachment  # lazy
    spec = _spec(req)
    valid = ipam_client.file_ipam().valid_attachments(req.config)
    if valid is None:
        return None
    driver = modes.driver(spec.mode)
    released = ipam_client.gc(req)
    for lease in released:
        gone = Attachment(lease.container_id, lease.ifname, None)
        driver.delete(spec, gone, [lease.address])
        if spec.dhcp:
            from cni_bridge import dhcp  # lazy: only dhcp networks
            dhcp.remove_host(spec.name, gone.host_ifname)
    if hasattr(driver, "gc"):
        driver.gc(spec, valid)
    if spec.mode == "bridge" and _ports_involved(req):
        from cni_bridge.cni import ports  # lazy
        ports.gc(spec, valid)
    return None


def cmd_status(req: CniRequest) -> None:
    spec = _spec(req)
    ipam_client.status(req)
    if spec.mode in ("bridge", "tap") and spec.ip_masq:
        from cni_bridge.kernel.nft import nft  # lazy: loads libnftables
        if not nft.available():
            raise PluginError(50, "masquerade is configured but nftables is not available")
    return None


MAIN_COMMANDS: dict[str, Callable[[CniRequest], Any]] = {
    "ADD": cmd_add, "DEL": cmd_del, "CHECK": cmd_check, "GC": cmd_gc, "STATUS": cmd_status}


# --- pybridge-ipam -----------------------------------------------------------------------------
def ipam_add(req: CniRequest) -> dict[str, Any]:
    from cni_bridge.cni.versions import convert  # lazy
    result = ipam_client.file_ipam().ipam_add(req.config["name"], req.container_id, req.ifname, req.config, req.args)
    return convert(result, req.version)


def ipam_del(req: CniRequest) -> None:
    ipam_client.file_ipam().ipam_del(req.config["name"], req.container_id, req.ifname, req.config)


def ipam_check(req: CniRequest) -> None:
    ipam_client.file_ipam().ipam_check(req.config["name"], req.container_id, req.ifname, req.config)


def ipam_gc(req: CniRequest) -> None:
    ipam_client.file_ipam().ipam_gc(req.config["name"], req.config)


def ipam_status(req: CniRequest) -> None:
    ipam_client.file_ipam().ipam_status(req.config["name"], req.config)


IPAM_COMMANDS: dict[str, Callable[[CniRequest], Any]] = {
    "ADD": ipam_add, "DEL": ipam_del, "CHECK": ipam_check, "GC": ipam_gc, "STATUS": ipam_status}

_ = ipaddress  # re-exported type users rely on in annotations
