"""Link-layer header types (tcpdump/IANA ``LINKTYPE_*`` values) as stored in capture files.

A capture file says, per file (pcap) or per interface (pcapng), what header
each frame starts with. These are the file-format values, not the
platform-dependent ``DLT_*`` values of a live libpcap handle. Kept apart from
the readers so decoders can name link types without importing any I/O code.
"""

from __future__ import annotations

LINKTYPE_NULL = 0  # BSD loopback: 4-byte address family in the writer's byte order
LINKTYPE_ETHERNET = 1
LINKTYPE_AX25 = 3
LINKTYPE_IEEE802_5 = 6  # Token Ring
LINKTYPE_ARCNET_BSD = 7
LINKTYPE_SLIP = 8
LINKTYPE_PPP = 9
LINKTYPE_FDDI = 10
LINKTYPE_PPP_HDLC = 50
LINKTYPE_PPP_ETHER = 51  # PPPoE session
LINKTYPE_ATM_RFC1483 = 100
LINKTYPE_RAW = 101  # raw IP; the version nibble tells IPv4 from IPv6
LINKTYPE_C_HDLC = 104  # Cisco HDLC
LINKTYPE_IEEE802_11 = 105
LINKTYPE_FRELAY = 107
LINKTYPE_LOOP = 108  # OpenBSD loopback: 4-byte address family, network byte order
LINKTYPE_LINUX_SLL = 113  # Linux "any" device, cooked header v1 (16 bytes)
LINKTYPE_PFLOG = 117
LINKTYPE_IEEE802_11_PRISM = 119
LINKTYPE_IEEE802_11_RADIOTAP = 127
LINKTYPE_IEEE802_11_AVS = 163
LINKTYPE_BLUETOOTH_HCI_H4 = 187
LINKTYPE_USB_LINUX = 189
LINKTYPE_ERF = 197
LINKTYPE_IPNET = 226
LINKTYPE_IPV4 = 228  # raw IPv4 only
LINKTYPE_IPV6 = 229  # raw IPv6 only
LINKTYPE_NFLOG = 239
LINKTYPE_NETANALYZER = 240
LINKTYPE_USBPCAP = 249
LINKTYPE_WIRESHARK_UPPER_PDU = 252
LINKTYPE_NETLINK = 253
LINKTYPE_PKTAP = 258
LINKTYPE_LINUX_SLL2 = 276  # Linux cooked header v2 (20 bytes, carries the interface index)

NAMES: dict[int, str] = {
    value: name.removeprefix("LINKTYPE_")
    for name, value in sorted(globals().items())
    if name.startswith("LINKTYPE_") and isinstance(value, int)
}

#: Link types whose frames begin directly with an IP header.
RAW_IP_LINKTYPES = frozenset({LINKTYPE_RAW, LINKTYPE_IPV4, LINKTYPE_IPV6})


def linktype_name(linktype: int) -> str:
    """``ETHERNET`` for 1, ``LINKTYPE_4711`` for a value this table does not know."""
    return NAMES.get(linktype, f"LINKTYPE_{linktype}")
