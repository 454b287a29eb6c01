"""Link, network and transport decoding: one frame in, the facts the flow table needs out.

This is the per-packet hot path, so it returns a plain tuple instead of an
object and reads fields with byte indexing rather than a dissector. (Measured
on the 1M-packet bench capture: dpkt's object decode runs at ~90k packets/s,
byte indexing at several hundred thousand.) Nothing here raises: a frame that
cannot be decoded comes back as ``(KIND, reason)`` with a negative KIND, so
the caller counts it and carries on.

A decoded IP packet is the tuple::

    (proto, key, ip_len, vlan, a, b, payload_offset, payload_len, ip_version, fragment_key)

``proto``
    IP protocol number (6 TCP, 17 UDP, 1 ICMP, 58 ICMPv6, other numbers).
``key``
    directional flow key: source address, destination address and the two
    "ports" as one bytes object; reversing it (:func:`reverse_key`) gives the
    key of the opposite direction. Ports are TCP/UDP ports, the echo
    identifier twice for ICMP echo, type and code for other ICMP messages,
    and zeros for other protocols (which are kept apart by ``proto``).
``ip_len``
    IP-layer length (IPv4 total length, IPv6 40 + payload length), as NetFlow
    counts bytes; never the captured length.
``vlan``
    the outermost 802.1Q/802.1ad VLAN id, or None.
``a, b``
    TCP: flags and sequence number. ICMP: type and code. Otherwise 0, 0.
``payload_offset, payload_len``
    where the transport payload starts in the frame and its length per the IP
    header (the frame may hold less when the capture was cut by snaplen).

``fragment_key``
    None, except for the first fragment of a fragmented datagram: then the
    (addresses, IP id, protocol) bytes that its later fragments share, so the
    flow table can account them to the same flow.

A non-first IP fragment is ``(FRAGMENT, fragment_key, ip_len, vlan, offset, more,
data_offset, data_len, ip_version, None)``: its byte offset in the fragmented
datagram, 1 if more fragments follow (else 0), and where its data lies in the
frame (per the IP header, as ``payload_len``), so the flow table can put a
datagram back together for an inspector that needs it whole (DNS answers).
"""

from __future__ import annotations

import struct

from .capture.linktypes import (
    LINKTYPE_ETHERNET,
    LINKTYPE_IPV4,
    LINKTYPE_IPV6,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_LOOP,
    LINKTYPE_NULL,
    LINKTYPE_RAW,
)

# Negative kinds. FRAGMENT is still accounted to its flow; the others are
# frames counted and skipped, never raised.
FRAGMENT = -1        # a non-first IP fragment (no transport header)
NOT_IP = -2          # ARP, LLDP, STP, 802.3/LLC ... nothing to track
MALFORMED = -3       # headers that cannot be what they claim
TRUNCATED = -4       # headers cut short by the capture's snaplen
UNKNOWN_LINK = -5    # link type this decoder does not know
KIND_NAMES = {NOT_IP: "not_ip", MALFORMED: "malformed", TRUNCATED: "truncated",
              UNKNOWN_LINK: "unknown_link"}

_ETH_VLAN = (0x8100, 0x88A8, 0x9100, 0x9200)
_ETH_IPV4 = 0x0800
_ETH_IPV6 = 0x86DD
_ETH_MPLS = (0x8847, 0x8848)
_ETH_PPPOE = 0x8864

# Raw IP: LINKTYPE_RAW, and the DLT_RAW values 12/14 some old writers stored instead.
_RAW_IP = (LINKTYPE_RAW, 12, 14)

# BSD loopback address families for IPv6 differ between systems.
_AF_INET6 = (10, 24, 28, 30)

# IPv6 extension headers that we walk over (hop-by-hop, routing, destination
# options, mobility, HIP, shim6); fragment (44) and AH (51) are handled apart.
_IPV6_EXT = frozenset((0, 43, 60, 135, 139, 140))

_u16 = struct.Struct("!H").unpack_from
_u32 = struct.Struct("!I").unpack_from

Decoded = tuple


def decode(frame: bytes, linktype: int) -> Decoded:
    """Decode one captured frame of the given link type.

    The common cases, Ethernet (untagged or one 802.1Q tag) carrying TCP or
    UDP in an unfragmented IPv4 packet without options or in IPv6 without
    extension headers, are decoded inline: the five nested calls of the
    general path cost about a third of the per-packet budget (profiled on the
    bench capture). Everything else, and anything unusual about the common
    cases, takes the general path; a property test checks that both paths
    agree on every input.
    """
    try:
        if linktype != LINKTYPE_ETHERNET:
            return _other_link(frame, linktype)
        et = frame[12] << 8 | frame[13]
        vlan = None
        l3 = 14
        if et == 0x8100:
            vlan = (frame[14] << 8 | frame[15]) & 0x0FFF
            et = frame[16] << 8 | frame[17]
            l3 = 18
        if et == 0x0800:
            if frame[l3] != 0x45 or len(frame) < l3 + 40:
                return _ethernet(frame)
            proto = frame[l3 + 9]
            tot = frame[l3 + 2] << 8 | frame[l3 + 3]
            if (proto != 6 and proto != 17) or frame[l3 + 6] & 0x3F | frame[l3 + 7] or tot < 28:
                return _ethernet(frame)
            src, l4, ver = l3 + 12, l3 + 20, 4
        elif et == 0x86DD and len(frame) >= l3 + 60:
            proto = frame[l3 + 6]
            tot = 40 + (frame[l3 + 4] << 8 | frame[l3 + 5])
            if (proto != 6 and proto != 17) or frame[l3] >> 4 != 6 or tot < 48:
                return _ethernet(frame)
            src, l4, ver = l3 + 8, l3 + 40, 6
        else:
            return _ethernet(frame)
        # TCP or UDP right after the fixed IP header (no function call: this is every packet)
        end = l3 + tot
        if proto == 17:
            return (17, frame[src:l4 + 4], tot, vlan, 0, 0, l4 + 8, end - l4 - 8, ver, None)
        doff = (frame[l4 + 12] >> 4) << 2
        if doff < 20 or l4 + doff > end:
            return _ethernet(frame)
        return (6, frame[src:l4 + 4], tot, vlan, frame[l4 + 13], _u32(frame, l4 + 4)[0],
                l4 + doff, end - l4 - doff, ver, None)
    except (IndexError, struct.error):
        return (TRUNCATED, "short header")


def decode_general(frame: bytes, linktype: int) -> Decoded:
    """The general path alone (no inline fast path): the reference the fast path must match."""
    try:
        if linktype == LINKTYPE_ETHERNET:
            return _ethernet(frame)
        return _other_link(frame, linktype)
    except (IndexError, struct.error):
        return (TRUNCATED, "short header")


def _ethernet(frame: bytes) -> Decoded:
    return _by_ethertype(frame, 14, frame[12] << 8 | frame[13])


def _mpls(frame: bytes, off: int, vlan: int | None) -> Decoded:
    """Pop MPLS labels to the bottom of the stack, then guess IP by its version nibble."""
    for _ in range(16):
        bottom = frame[off + 2] & 1
        off += 4
        if bottom:
            return _ip_by_version(frame, off, vlan)
    return (MALFORMED, "MPLS label stack without bottom")


def _pppoe(frame: bytes, off: int, vlan: int | None) -> Decoded:
    proto = frame[off + 6] << 8 | frame[off + 7]
    if proto == 0x0021:
        return ipv4(frame, off + 8, vlan)
    if proto == 0x0057:
        return ipv6(frame, off + 8, vlan)
    return (NOT_IP, "PPP protocol 0x%04x" % proto)


def _ip_by_version(frame: bytes, off: int, vlan: int | None) -> Decoded:
    v = frame[off] >> 4
    if v == 4:
        return ipv4(frame, off, vlan)
    if v == 6:
        return ipv6(frame, off, vlan)
    return (NOT_IP, "IP version %d" % v)


def _other_link(frame: bytes, linktype: int) -> Decoded:
    if linktype in _RAW_IP:
        return _ip_by_version(frame, 0, None)
    if linktype == LINKTYPE_IPV4:
        return ipv4(frame, 0, None)
    if linktype == LINKTYPE_IPV6:
        return ipv6(frame, 0, None)
    if linktype == LINKTYPE_LINUX_SLL:
        return _by_ethertype(frame, 16, frame[14] << 8 | frame[15])
    if linktype == LINKTYPE_LINUX_SLL2:
        return _by_ethertype(frame, 20, frame[0] << 8 | frame[1])
    if linktype in (LINKTYPE_NULL, LINKTYPE_LOOP) and len(frame) < 4:
        return (TRUNCATED, "loopback header")
    if linktype == LINKTYPE_NULL:
        family = int.from_bytes(frame[0:4], "little")
        if family > 0xFFFF:  # written on a big-endian host
            family = int.from_bytes(frame[0:4], "big")
        return _by_family(frame, family)
    if linktype == LINKTYPE_LOOP:
        return _by_family(frame, int.from_bytes(frame[0:4], "big"))
    return (UNKNOWN_LINK, "link type %d" % linktype)


def _by_ethertype(frame: bytes, off: int, et: int) -> Decoded:
    """Walk VLAN tags (keeping the outermost id), then dispatch on the ethertype."""
    vlan = None
    while et in _ETH_VLAN:  # a cooked capture may keep the tag in the payload too
        if vlan is None:
            vlan = (frame[off] << 8 | frame[off + 1]) & 0x0FFF
        et = frame[off + 2] << 8 | frame[off + 3]
        off += 4
    if et == _ETH_IPV4:
        return ipv4(frame, off, vlan)
    if et == _ETH_IPV6:
        return ipv6(frame, off, vlan)
    if et in _ETH_MPLS:
        return _mpls(frame, off, vlan)
    if et == _ETH_PPPOE:
        return _pppoe(frame, off, vlan)
    return (NOT_IP, "ethertype 0x%04x" % et)


def _by_family(frame: bytes, family: int) -> Decoded:
    if family == 2:
        return ipv4(frame, 4, None)
    if family in _AF_INET6:
        return ipv6(frame, 4, None)
    return (NOT_IP, "address family %d" % family)


def ipv4(frame: bytes, l3: int, vlan: int | None) -> Decoded:
    """Decode an IPv4 header at ``l3`` and its transport header."""
    vihl = frame[l3]
    ihl = (vihl & 15) << 2
    if vihl >> 4 != 4 or ihl < 20:
        return (MALFORMED, "bad IPv4 header")
    tot = frame[l3 + 2] << 8 | frame[l3 + 3]
    if len(frame) < l3 + ihl:
        return (TRUNCATED, "IPv4 header")
    if tot == 0:  # TSO/GSO on the capturing host: the kernel left it to the NIC
        tot = len(frame) - l3
    elif tot < ihl:
        return (MALFORMED, "IPv4 total length shorter than its header")
    proto = frame[l3 + 9]
    frag = frame[l3 + 6] << 8 | frame[l3 + 7]
    if frag & 0x3FFF:  # MF set or non-zero offset
        fkey = frame[l3 + 12:l3 + 20] + frame[l3 + 4:l3 + 6] + bytes((proto,))
        if frag & 0x1FFF:
            return (FRAGMENT, fkey, tot, vlan, (frag & 0x1FFF) << 3, frag >> 13 & 1, l3 + ihl,
                    tot - ihl, 4, None)
        return _first_fragment(transport(frame, l3 + 12, l3 + 16, l3 + ihl, l3 + tot, proto, tot,
                                         vlan, 4), fkey)
    return transport(frame, l3 + 12, l3 + 16, l3 + ihl, l3 + tot, proto, tot, vlan, 4)


def ipv6(frame: bytes, l3: int, vlan: int | None) -> Decoded:
    """Decode an IPv6 header, walk its extension headers, then the transport header."""
    if frame[l3] >> 4 != 6:
        return (MALFORMED, "bad IPv6 header")
    if len(frame) < l3 + 40:
        return (TRUNCATED, "IPv6 header")
    plen = frame[l3 + 4] << 8 | frame[l3 + 5]
    if plen == 0:  # jumbogram or TSO; count what was captured
        plen = len(frame) - l3 - 40
    tot = 40 + plen
    end = l3 + tot
    nh = frame[l3 + 6]
    off = l3 + 40
    fkey = None
    while True:
        if nh in _IPV6_EXT:
            nh, off = frame[off], off + ((frame[off + 1] + 1) << 3)
        elif nh == 51:  # AH: length in 4-octet units
            nh, off = frame[off], off + ((frame[off + 1] + 2) << 2)
        elif nh == 44:
            if len(frame) < off + 8:
                return (TRUNCATED, "IPv6 fragment header")
            fo = frame[off + 2] << 8 | frame[off + 3]
            fkey = frame[l3 + 8:l3 + 40] + frame[off + 4:off + 8]
            if fo & 0xFFF8:
                return (FRAGMENT, fkey, tot, vlan, fo & 0xFFF8, fo & 1, off + 8,
                        max(0, end - off - 8), 6, None)
            nh, off = frame[off], off + 8
        else:
            break
        if off > end:
            return (MALFORMED, "IPv6 extension headers overrun the packet")
    res = transport(frame, l3 + 8, l3 + 24, off, end, nh, tot, vlan, 6)
    return res if fkey is None else _first_fragment(res, fkey)


def _first_fragment(res: Decoded, fkey: bytes) -> Decoded:
    if res[0] < 0:
        return res
    return res[:9] + (fkey,)


def transport(frame: bytes, src: int, dst: int, l4: int, end: int, proto: int, tot: int,
              vlan: int | None, ver: int) -> Decoded:
    """Decode the TCP/UDP/ICMP header at ``l4``; ``src``/``dst`` locate the addresses."""
    alen = dst - src
    if proto == 6:
        if len(frame) < l4 + 14:
            return (TRUNCATED, "TCP header")
        doff = (frame[l4 + 12] >> 4) << 2
        if doff < 20 or l4 + doff > end:
            return (MALFORMED, "bad TCP data offset")
        key = _addr_ports(frame, src, dst, alen, l4)
        return (6, key, tot, vlan, frame[l4 + 13], _u32(frame, l4 + 4)[0], l4 + doff,
                end - l4 - doff, ver, None)
    if proto == 17:
        if len(frame) < l4 + 8:
            return (TRUNCATED, "UDP header")
        if l4 + 8 > end:
            return (MALFORMED, "UDP header beyond the IP payload")
        key = _addr_ports(frame, src, dst, alen, l4)
        return (17, key, tot, vlan, 0, 0, l4 + 8, end - l4 - 8, ver, None)
    if proto == 1 or proto == 58:
        if l4 + 8 > end:
            return (MALFORMED, "ICMP header beyond the IP payload")
        return _icmp(frame, src, dst, l4, end, proto, tot, vlan, ver)
    key = frame[src:dst] + frame[dst:dst + alen] + b"\0\0\0\0"
    return (proto, key, tot, vlan, 0, 0, l4, end - l4, ver, None)


def _addr_ports(frame: bytes, src: int, dst: int, alen: int, l4: int) -> bytes:
    if dst + alen == l4:  # no IP options / extension headers: one slice
        return frame[src:l4 + 4]
    return frame[src:dst + alen] + frame[l4:l4 + 4]


_ECHO = {1: (8, 0), 58: (128, 129)}


def _icmp(frame: bytes, src: int, dst: int, l4: int, end: int, proto: int, tot: int,
          vlan: int | None, ver: int) -> Decoded:
    if len(frame) < l4 + 8:
        return (TRUNCATED, "ICMP header")
    typ, code = frame[l4], frame[l4 + 1]
    addrs = frame[src:dst + (dst - src)]
    if typ in _ECHO[proto]:
        ident = frame[l4 + 4:l4 + 6]
        key = addrs + ident + ident
    else:
        key = addrs + bytes((0, typ, 0, code))
    return (proto, key, tot, vlan, typ, code, l4 + 8, end - l4 - 8, ver, None)


def reverse_key(key: bytes) -> bytes:
    """The key of the opposite direction: addresses swapped, ports swapped."""
    half = (len(key) - 4) >> 1
    return key[half:2 * half] + key[:half] + key[-2:] + key[-4:-2]


def key_fields(key: bytes) -> tuple[bytes, bytes, int, int]:
    """Split a flow key into (src address, dst address, src port, dst port)."""
    half = (len(key) - 4) >> 1
    return key[:half], key[half:2 * half], key[-4] << 8 | key[-3], key[-2] << 8 | key[-1]
