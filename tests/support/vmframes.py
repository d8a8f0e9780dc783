"""Raw Ethernet frames for tests that play a VM's NIC on a tap descriptor: an ARP request the
"guest" sends, and recognising the answer. Built by hand (struct), so a test needs no scapy."""

from __future__ import annotations

import ipaddress
import os
import select
import struct

ETH_P_ARP = 0x0806
BROADCAST = b"\xff" * 6


def _mac(text: str) -> bytes:
    return bytes(int(part, 16) for part in text.split(":"))


def arp_request(src_mac: str, src_ip: str, target_ip: str) -> bytes:
    """Who has `target_ip`? Tell `src_ip` (at `src_mac`): broadcast, as a guest's first frame."""
    mac = _mac(src_mac)
    header = BROADCAST + mac + struct.pack("!H", ETH_P_ARP)
    body = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + mac + ipaddress.IPv4Address(src_ip).packed \
        + b"\0" * 6 + ipaddress.IPv4Address(target_ip).packed
    return header + body


def arp_reply_for(frame: bytes, sender_ip: str, to_mac: str) -> bool:
    """Is `frame` an ARP reply from `sender_ip` addressed to `to_mac`?"""
    if len(frame) < 42 or frame[:6] != _mac(to_mac) or struct.unpack("!H", frame[12:14])[0] != ETH_P_ARP:
        return False
    opcode = struct.unpack("!H", frame[20:22])[0]
    return opcode == 2 and frame[28:32] == ipaddress.IPv4Address(sender_ip).packed


def gateway_answers(fd: int, mac: str, ip: str, gateway: str, attempts: int = 10) -> bool:
    """Play the guest on a tap descriptor: ask for `gateway`'s MAC until it answers (as a guest's
    ARP does: a bridge port just made starts forwarding only when the kernel's link watch has
    seen its carrier, up to a second later), reading past other frames (IPv6, multicast)."""
    for _ in range(attempts):
        os.write(fd, arp_request(mac, ip, gateway))
        while select.select([fd], [], [], 1.0)[0]:
            if arp_reply_for(os.read(fd, 65536), gateway, mac):
                return True
    return False
