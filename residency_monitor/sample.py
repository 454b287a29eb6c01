"""A small, deterministic capture of a Macau office gateway: the sample ``replay`` plays.

The sample stands for about eighty seconds of traffic on the LAN side (before NAT) of a small
office's gateway: desktops in 192.168.1.0/24, a routed floor in 10.10.0.0/16 behind a layer-3
switch, a kiosk on VLAN 20 of the trunk and one IPv6 laptop in fd00:10::/64. It holds one
flow of every kind the monitor has to judge: TLS 1.3 to Macau (compliant), personal data
to the US, mainland China and Hong Kong, a TLS 1.0 client, a post-quantum Chrome
ClientHello split over two TCP segments, plaintext HTTP and SMTP, IPv6, VLAN, an
unanswered SYN, ICMP, and internal traffic that never leaves. Each outbound flow is
preceded by the DNS lookup a real client would make.

Everything a real capture varies (ports, sequence numbers, keys, encrypted bytes) comes
from a ``random.Random`` seeded per flow, and packet times from a fixed start, so the file
is the same bit for bit on every run; the tests regenerate it and compare. ``EXPECTED`` is
the ground truth per flow, written out literally so that a change to the generator shows
up as a diff against it rather than as silently shifted numbers.
"""

from __future__ import annotations

import argparse
import ipaddress
import random
import struct
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

__all__ = ["EXPECTED", "SAMPLE_PATH", "build_sample", "main", "sample_flows", "write_pcap"]

SAMPLE_PATH: Path = Path(__file__).parent / "data" / "sample.pcap"

SEED = "residency-monitor sample v1"
START_US = int(datetime(2026, 3, 2, 9, 0, 0, tzinfo=timezone.utc).timestamp()) * 1_000_000

LINKTYPE_ETHERNET = 1
ETH_IPV4, ETH_IPV6, ETH_VLAN = 0x0800, 0x86DD, 0x8100
PROTO_ICMP, PROTO_TCP, PROTO_UDP = 1, 6, 17
FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10

TLS10, TLS12, TLS13 = 0x0301, 0x0303, 0x0304
CT_CCS, CT_ALERT, CT_HANDSHAKE, CT_APPDATA = 20, 21, 22, 23
X25519, SECP256R1, X25519MLKEM768 = 0x001D, 0x0017, 0x11EC
EXT_ECH = 0xFE0D


# --- hosts -----------------------------------------------------------------------------


def _mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


GATEWAY_MAC = _mac("00:0d:b9:5e:21:c4")
L3_SWITCH_MAC = _mac("00:1e:49:7a:33:10")


@dataclass(frozen=True)
class _Host:
    """One end of a flow as the gateway's LAN port sees it.

    Remote hosts wear the gateway's MAC, and ``ttl`` is the TTL or hop limit as it
    arrives at the capture point, so hosts behind a router show one hop less.
    ``stack`` decides TCP options: "linux" sends timestamps, "windows" does not.
    """

    ip: str
    mac: bytes
    ttl: int
    stack: str = "linux"
    vlan: int | None = None

    @property
    def addr(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        return ipaddress.ip_address(self.ip)


def _remote(ip: str, ttl: int) -> _Host:
    return _Host(ip, GATEWAY_MAC, ttl)


RESOLVER = _Host("192.168.1.1", GATEWAY_MAC, 64)
RESOLVER6 = _Host("fd00:10::1", GATEWAY_MAC, 64)
RECEPTION_PC = _Host("192.168.1.23", _mac("3c:52:82:6a:91:0e"), 128, "windows")
LAPTOP = _Host("192.168.1.31", _mac("f0:2f:74:c3:5d:7a"), 64)
MAIL_HOST = _Host("192.168.1.5", _mac("52:54:00:8e:3b:14"), 64)
NAS = _Host("192.168.1.10", _mac("00:11:32:a4:5c:21"), 64)
PRINTER = _Host("192.168.1.12", _mac("3c:d9:2b:6e:07:a1"), 64)
ACCOUNTS_PC = _Host("10.10.3.21", L3_SWITCH_MAC, 127, "windows")
LEGACY_PC = _Host("10.10.3.40", L3_SWITCH_MAC, 127, "windows")
KIOSK = _Host("10.10.20.15", _mac("b8:27:eb:4d:90:6a"), 64, vlan=20)
V6_LAPTOP = _Host("fd00:10::5a3c:8f1e:2b47:91d0", _mac("a4:83:e7:19:c2:5b"), 64)

# Each address was checked against the RIR data that iptocc embeds.
MO_BANK = _remote("202.175.80.41", 58)
US_CRM = _remote("13.107.42.14", 114)
CN_LOGISTICS = _remote("39.156.66.10", 50)
HK_SUPPLIER = _remote("203.198.20.40", 55)
DE_PAYROLL = _remote("85.214.132.117", 46)
JP_TRAVEL = _remote("133.242.10.20", 49)
SG_EVENTS = _remote("203.116.165.10", 52)
US_MX = _remote("45.60.10.10", 47)
DE_STORAGE6 = _remote("2a01:238:20a:202::10", 51)
MO_GOV = _remote("60.246.5.10", 57)
US_DEAD = _remote("3.33.200.10", 50)
GOOGLE_DNS = _remote("8.8.8.8", 117)


# --- wire format -------------------------------------------------------------------------


def _u8(v: int) -> bytes:
    return bytes((v,))


def _u16(v: int) -> bytes:
    return struct.pack("!H", v)


def _u16s(values: Sequence[int]) -> bytes:
    return b"".join(_u16(v) for v in values)


def _u24(v: int) -> bytes:
    return v.to_bytes(3, "big")


def _v8(data: bytes) -> bytes:
    return _u8(len(data)) + data


def _v16(data: bytes) -> bytes:
    return _u16(len(data)) + data


def _v24(data: bytes) -> bytes:
    return _u24(len(data)) + data


def _checksum(data: bytes) -> int:
    """RFC 1071 Internet checksum."""
    if len(data) % 2:
        data += b"\x00"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _with_checksum(data: bytes, offset: int, prefix: bytes = b"") -> bytes:
    """``data`` with its checksum field at ``offset`` filled in (``prefix``: pseudo-header)."""
    value = _checksum(prefix + data) or 0xFFFF  # 0 means "no checksum" for UDP
    return data[:offset] + _u16(value) + data[offset + 2:]


def _ipv4(src: _Host, dst: _Host, proto: int, payload: bytes, ident: int) -> bytes:
    flags = 0x4000 if proto == PROTO_TCP else 0  # DF on TCP, as the stacks here do
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), ident, flags, src.ttl, proto, 0,
        src.addr.packed, dst.addr.packed,
    )
    return _with_checksum(header, 10) + payload


def _ipv6(src: _Host, dst: _Host, proto: int, payload: bytes, flow_label: int) -> bytes:
    first = (6 << 28) | flow_label
    header = struct.pack("!IHBB", first, len(payload), proto, src.ttl)
    return header + src.addr.packed + dst.addr.packed + payload


def _pseudo_header(src: _Host, dst: _Host, proto: int, length: int) -> bytes:
    if src.addr.version == 4:
        return src.addr.packed + dst.addr.packed + struct.pack("!BBH", 0, proto, length)
    return src.addr.packed + dst.addr.packed + struct.pack("!I3xB", length, proto)


def _ethernet(src: _Host, dst: _Host, ethertype: int, payload: bytes) -> bytes:
    """A frame as captured on the LAN port.

    Frames that arrive from the wire were padded to the 60-byte minimum by their sender;
    the gateway's own frames are captured before the NIC pads them. The padding is a
    trap worth keeping: byte counts must come from IP lengths, not frame lengths.
    """
    body = _u16(ethertype) + payload
    if src.mac != GATEWAY_MAC and len(body) < 48:
        body += bytes(48 - len(body))
    vlan = src.vlan or dst.vlan
    tag = _u16(ETH_VLAN) + _u16(vlan) if vlan else b""
    return dst.mac + src.mac + tag + body


# --- capture and per-flow bookkeeping ---------------------------------------------------


@dataclass
class _Ledger:
    """What a flow is meant to be, and the packets and IP bytes it got in each direction."""

    name: str
    client: _Host
    server: _Host
    client_port: int | None
    server_port: int | None
    transport: str
    app: str | None
    country: str | None
    host: str | None = None
    sni: str | None = None
    tls_version: str | None = None
    counts: list[int] = field(default_factory=lambda: [0, 0, 0, 0])

    def as_dict(self) -> dict[str, Any]:
        packets_out, packets_in, bytes_out, bytes_in = self.counts
        return {
            "name": self.name, "client_ip": self.client.ip, "client_port": self.client_port,
            "server_ip": self.server.ip, "server_port": self.server_port,
            "transport": self.transport, "vlan": self.client.vlan or self.server.vlan,
            "app": self.app, "host": self.host, "sni": self.sni,
            "tls_version": self.tls_version, "country": self.country,
            "packets_out": packets_out, "packets_in": packets_in,
            "bytes_out": bytes_out, "bytes_in": bytes_in,
        }


class _Capture:
    """Collects frames from every flow, then orders them by capture time."""

    def __init__(self) -> None:
        self._packets: list[tuple[int, int, bytes]] = []
        self.ledgers: list[_Ledger] = []

    def add(self, t_us: int, frame: bytes) -> None:
        self._packets.append((t_us, len(self._packets), frame))

    def frames(self) -> list[tuple[float, bytes]]:
        return [((START_US + t) / 1e6, frame) for t, _, frame in sorted(self._packets)]


class _Link:
    """Turns transport payloads of one flow into frames, and counts them in its ledger."""

    def __init__(self, cap: _Capture, ledger: _Ledger, rng: random.Random) -> None:
        self.cap = cap
        self.ledger = ledger
        self.ip_id = {True: rng.randrange(65536), False: rng.randrange(65536)}
        self.flow_label = {True: rng.randrange(1 << 20), False: rng.randrange(1 << 20)}
        cap.ledgers.append(ledger)

    def ends(self, from_client: bool) -> tuple[_Host, _Host]:
        c, s = self.ledger.client, self.ledger.server
        return (c, s) if from_client else (s, c)

    def emit(self, t_us: int, from_client: bool, proto: int, l4: bytes, csum_at: int) -> None:
        src, dst = self.ends(from_client)
        pseudo = _pseudo_header(src, dst, proto, len(l4)) if proto != PROTO_ICMP else b""
        l4 = _with_checksum(l4, csum_at, pseudo)
        if src.addr.version == 4:
            packet = _ipv4(src, dst, proto, l4, self.ip_id[from_client])
            self.ip_id[from_client] = (self.ip_id[from_client] + 1) & 0xFFFF
            frame = _ethernet(src, dst, ETH_IPV4, packet)
        else:
            packet = _ipv6(src, dst, proto, l4, self.flow_label[from_client])
            frame = _ethernet(src, dst, ETH_IPV6, packet)
        side = 0 if from_client else 1
        self.ledger.counts[side] += 1
        self.ledger.counts[2 + side] += len(packet)
        self.cap.add(t_us, frame)


def _rng(name: str) -> random.Random:
    """One generator per flow, so that editing one flow leaves every other byte alone."""
    return random.Random(f"{SEED}:{name}")


# --- TCP ------------------------------------------------------------------------------


@dataclass
class _Side:
    port: int
    seq: int
    ts_base: int
    window: int
    cwnd: int = 10
    unacked: int = 0  # segments this side has received and not yet acknowledged
    unacked_since: int = 0


class _Tcp:
    """A TCP connection replayed at the gateway, which sits next to the client.

    A client packet is captured when it is sent and a server packet one path RTT after
    whatever it answers. Data moves in congestion-window rounds (10 segments, doubling),
    the receiver ACKs every second segment, and a lone unacknowledged segment is ACKed
    40 ms later unless the receiver has something to send before then.
    """

    LAN_US = 120
    DELACK_US = 40_000

    def __init__(self, cap: _Capture, ledger: _Ledger, rng: random.Random, t_us: int,
                 rtt_us: int) -> None:
        self.rng = rng
        self.link = _Link(cap, ledger, rng)
        self.client, self.server = ledger.client, ledger.server
        self.ts_on = self.client.stack == "linux"
        win_c = 502 if self.ts_on else 1026
        assert ledger.client_port is not None and ledger.server_port is not None
        self.sides = {
            True: _Side(ledger.client_port, rng.getrandbits(32), rng.getrandbits(32), win_c),
            False: _Side(ledger.server_port, rng.getrandbits(32), rng.getrandbits(32), 501),
        }
        mss = 1440 if self.client.addr.version == 6 else 1460
        self.mss = mss
        self.payload_max = mss - (12 if self.ts_on else 0)
        self.rtt = rtt_us
        self.t = t_us
        self.last_sender: bool | None = None

    # packets

    def _options(self, from_client: bool, t: int, syn: bool) -> bytes:
        me, peer = self.sides[from_client], self.sides[not from_client]
        tsval = (me.ts_base + t // 1000) & 0xFFFFFFFF
        lag = self.LAN_US if from_client else self.rtt
        tsecr = 0 if syn and from_client else (peer.ts_base + (t - lag) // 1000) & 0xFFFFFFFF
        ts = struct.pack("!BBII", 8, 10, tsval, tsecr)
        if not syn:
            return b"\x01\x01" + ts if self.ts_on else b""
        mss = struct.pack("!BBH", 2, 4, self.mss)
        wscale = 7 if from_client else 9
        if self.ts_on:  # Linux order: MSS, SACK_PERM, TS, NOP, WS
            return mss + b"\x04\x02" + ts + b"\x01" + struct.pack("!BBB", 3, 3, wscale)
        if from_client:  # Windows order: MSS, NOP, WS, NOP, NOP, SACK_PERM
            return mss + b"\x01" + struct.pack("!BBB", 3, 3, 8) + b"\x01\x01\x04\x02"
        return mss + b"\x01\x01\x04\x02\x01" + struct.pack("!BBB", 3, 3, wscale)

    def _emit(self, t: int, from_client: bool, flags: int, payload: bytes = b"",
              ack: int | None = None) -> None:
        me, peer = self.sides[from_client], self.sides[not from_client]
        options = self._options(from_client, t, bool(flags & SYN))
        window = (64240 if from_client else 65160) if flags & SYN else me.window
        ack_no = (peer.seq if ack is None else ack) if flags & ACK else 0
        header = struct.pack(
            "!HHIIBBHHH", me.port, peer.port, me.seq, ack_no, (20 + len(options)) << 2 & 0xF0,
            flags, window, 0, 0,
        )
        self.link.emit(t, from_client, PROTO_TCP, header + options + payload, 16)
        me.seq = (me.seq + len(payload) + (1 if flags & (SYN | FIN) else 0)) & 0xFFFFFFFF

    # timing

    def _start(self, from_client: bool, think_us: int) -> int:
        """When ``from_client``'s next packet is captured, ``think_us`` after its cue."""
        if self.last_sender is None or self.last_sender == from_client:
            cue = self.t
        else:
            cue = self.t + (self.LAN_US if from_client else self.rtt)
        start = cue + think_us
        self._flush_delayed_acks(start, from_client)
        return start

    def _flush_delayed_acks(self, start: int, sender: bool) -> None:
        for side in (True, False):
            me = self.sides[side]
            if not me.unacked:
                continue
            due = me.unacked_since + self.DELACK_US
            if start > due:
                self._emit(due, side, ACK)
                me.unacked = 0
            elif side == sender:
                me.unacked = 0  # the data about to leave carries the ACK

    def _ack_delay(self, from_client: bool) -> int:
        """Capture-time distance from a data segment to the receiver's ACK of it."""
        return self.rtt if from_client else 40

    # operations

    def connect(self) -> None:
        t = self.t
        self._emit(t, True, SYN)
        t += self.rtt
        self._emit(t, False, SYN | ACK)
        t += self.LAN_US
        self._emit(t, True, ACK)
        self.t, self.last_sender = t, True

    def send(self, from_client: bool, data: bytes, think_us: int = 0) -> None:
        """Send ``data`` as MSS-sized segments in cwnd rounds, with the peer's ACKs."""
        t = self._start(from_client, think_us)
        me, peer = self.sides[from_client], self.sides[not from_client]
        gap = 20 if from_client else 120  # LAN wire speed vs a 100 Mbit/s WAN bottleneck
        chunks = [data[i:i + self.payload_max] for i in range(0, len(data), self.payload_max)]
        done, last_data_t = 0, t
        while done < len(chunks):
            burst = chunks[done:done + me.cwnd]
            last_ack_t = t
            for k, chunk in enumerate(burst):
                final = done + k == len(chunks) - 1
                self._emit(t, from_client, ACK | (PSH if final else 0), chunk)
                last_data_t = t
                peer.unacked += 1
                peer.unacked_since = t + self._ack_delay(from_client)
                round_end = k == len(burst) - 1 and not final
                if peer.unacked >= 2 or round_end:
                    last_ack_t = peer.unacked_since
                    self._emit(last_ack_t, not from_client, ACK, ack=me.seq)
                    peer.unacked = 0
                t += gap
            done += len(burst)
            me.cwnd *= 2
            t = last_ack_t + (gap if from_client else self.rtt)
        self.t, self.last_sender = last_data_t, from_client

    def close(self, from_client: bool, think_us: int = 0) -> None:
        """FIN from ``from_client``, answered by the peer's FIN, then the last ACK."""
        t = self._start(from_client, think_us)
        self._emit(t, from_client, FIN | ACK)
        t += self.rtt if from_client else self.LAN_US
        self._emit(t, not from_client, FIN | ACK)
        t += self.LAN_US if from_client else self.rtt
        self._emit(t, from_client, ACK)
        self.t, self.last_sender = t, from_client

    def reset(self, from_client: bool, think_us: int = 0) -> None:
        t = self._start(from_client, think_us)
        self._emit(t, from_client, RST | ACK)
        self.t, self.last_sender = t, from_client

    def unanswered_syn(self, retries: int) -> None:
        """A SYN into silence, retransmitted after 1 s, 2 s, 4 s... (RFC 6298 backoff)."""
        t, rto = self.t, 1_000_000
        client = self.sides[True]
        for _ in range(retries + 1):
            self._emit(t, True, SYN)
            client.seq = (client.seq - 1) & 0xFFFFFFFF  # a retransmission reuses the ISN
            t += rto
            rto *= 2


# --- UDP, DNS, ICMP -------------------------------------------------------------------


def _udp(sport: int, dport: int, payload: bytes) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


DNS_A, DNS_MX, DNS_CNAME, DNS_SOA, DNS_AAAA, DNS_OPT, DNS_HTTPS = 1, 15, 5, 6, 28, 41, 65
DNS_TYPE_NAMES = {DNS_A: "A", DNS_MX: "MX", DNS_AAAA: "AAAA", DNS_HTTPS: "HTTPS"}


class _DnsMessage:
    """Writes a DNS message with name compression, as resolvers do."""

    def __init__(self, ident: int, flags: int) -> None:
        self.buf = bytearray(12)
        self.ident, self.flags = ident, flags
        self.counts = [0, 0, 0, 0]
        self.offsets: dict[str, int] = {}

    def _name(self, name: str) -> None:
        labels = name.rstrip(".").split(".")
        for i in range(len(labels)):
            suffix = ".".join(labels[i:]).lower()
            if suffix in self.offsets:
                self.buf += _u16(0xC000 | self.offsets[suffix])
                return
            if len(self.buf) < 0x3FFF:
                self.offsets[suffix] = len(self.buf)
            self.buf += _v8(labels[i].encode())
        self.buf += b"\x00"

    def question(self, name: str, qtype: int) -> None:
        self._name(name)
        self.buf += struct.pack("!HH", qtype, 1)
        self.counts[0] += 1

    def record(self, section: int, name: str, rtype: int, ttl: int,
               rdata: Sequence[bytes | str]) -> None:
        """Add a record to section 1-3; ``str`` parts of ``rdata`` are compressed names."""
        self._name(name)
        self.buf += struct.pack("!HHI", rtype, 1, ttl)
        at = len(self.buf)
        self.buf += b"\x00\x00"
        for part in rdata:
            if isinstance(part, str):
                self._name(part)
            else:
                self.buf += part
        self.buf[at:at + 2] = _u16(len(self.buf) - at - 2)
        self.counts[section] += 1

    def edns(self) -> None:
        self.buf += b"\x00" + struct.pack("!HHIH", DNS_OPT, 1232, 0, 0)
        self.counts[3] += 1

    def __bytes__(self) -> bytes:
        return struct.pack("!HH4H", self.ident, self.flags, *self.counts) + bytes(self.buf[12:])


_Record = tuple[str, int, int, Sequence[bytes | str]]  # owner, type, TTL, rdata parts


def _a(name: str, ip: str, ttl: int = 300) -> _Record:
    return (name, DNS_A if ":" not in ip else DNS_AAAA, ttl, [ipaddress.ip_address(ip).packed])


def _soa(zone: str) -> _Record:
    times = struct.pack("!5I", 2026030201, 7200, 3600, 1209600, 300)
    return (zone, DNS_SOA, 300, [f"ns1.{zone}", f"hostmaster.{zone}", times])


def _ephemeral(rng: random.Random, host: _Host) -> int:
    """A source port from the client OS's ephemeral range."""
    return rng.randint(49152, 65535) if host.stack == "windows" else rng.randint(32768, 60999)


def _dns_lookup(cap: _Capture, client: _Host, t_us: int, qname: str, qtype: int,
                answers: Sequence[_Record], authority: Sequence[_Record] = (),
                additional: Sequence[_Record] = (), delay_us: int = 18_000) -> None:
    """One query to the office resolver and its answer, as its own UDP flow."""
    rng = _rng(f"dns:{qname}:{qtype}:{client.ip}")
    resolver = RESOLVER6 if client.addr.version == 6 else RESOLVER
    port = _ephemeral(rng, client)
    label = f"dns {DNS_TYPE_NAMES[qtype]} {qname}"
    ledger = _Ledger(label, client, resolver, port, 53, "udp", "dns", None, qname)
    link = _Link(cap, ledger, rng)
    ident = rng.randrange(65536)
    query = _DnsMessage(ident, 0x0100)
    query.question(qname, qtype)
    query.edns()
    link.emit(t_us, True, PROTO_UDP, _udp(port, 53, bytes(query)), 6)
    reply = _DnsMessage(ident, 0x8180)
    reply.question(qname, qtype)
    for section, records in ((1, answers), (2, authority), (3, additional)):
        for owner, rtype, ttl, rdata in records:
            reply.record(section, owner, rtype, ttl, rdata)
    reply.edns()
    link.emit(t_us + delay_us, False, PROTO_UDP, _udp(53, port, bytes(reply)), 6)


def _dns_a(cap: _Capture, client: _Host, t_us: int, name: str, server: _Host,
           delay_us: int = 18_000) -> None:
    qtype = DNS_AAAA if server.addr.version == 6 else DNS_A
    _dns_lookup(cap, client, t_us, name, qtype, [_a(name, server.ip)], delay_us=delay_us)


# --- X.509 (shape only) ---------------------------------------------------------------


def _der(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        return _u8(tag) + _u8(n) + content
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return _u8(tag) + _u8(0x80 | len(size)) + size + content


def _oid(dotted: str) -> bytes:
    parts = [int(p) for p in dotted.split(".")]
    body = bytearray((40 * parts[0] + parts[1],))
    for value in parts[2:]:
        chunk = [value & 0x7F]
        value >>= 7
        while value:
            chunk.append(0x80 | (value & 0x7F))
            value >>= 7
        body += bytes(reversed(chunk))
    return _der(0x06, bytes(body))


def _seq(*items: bytes) -> bytes:
    return _der(0x30, b"".join(items))


def _dn(country: str, org: str, cn: str) -> bytes:
    rdns = (("2.5.4.6", 0x13, country), ("2.5.4.10", 0x0C, org), ("2.5.4.3", 0x0C, cn))
    return _seq(*(_der(0x31, _seq(_oid(o), _der(t, v.encode()))) for o, t, v in rdns))


def _fake_certificate(rng: random.Random, subject: tuple[str, str, str],
                      issuer: tuple[str, str, str], san: str | None) -> bytes:
    """A structurally valid X.509 v3 certificate with an RSA-2048-sized key and signature.

    The key and signature are random bytes: nothing here verifies, but any certificate
    parser sees the names a real chain would carry.
    """
    sha256_rsa = _seq(_oid("1.2.840.113549.1.1.11"), b"\x05\x00")
    modulus = b"\x00" + _u8(0x80 | rng.getrandbits(7)) + rng.randbytes(254) + b"\x01"
    rsa_key = _seq(_der(0x02, modulus), _der(0x02, b"\x01\x00\x01"))
    spki = _seq(_seq(_oid("1.2.840.113549.1.1.1"), b"\x05\x00"), _der(0x03, b"\x00" + rsa_key))
    extensions = b""
    if san:
        names = _seq(_der(0x82, san.encode()))
        extensions = _der(0xA3, _seq(_seq(_oid("2.5.29.17"), _der(0x04, names))))
    tbs = _seq(
        _der(0xA0, _der(0x02, b"\x02")),
        _der(0x02, _u8(rng.randint(1, 0x7F)) + rng.randbytes(15)),
        sha256_rsa,
        _dn(*issuer),
        _seq(_der(0x17, b"260101000000Z"), _der(0x17, b"261231235959Z")),
        _dn(*subject),
        spki,
        extensions,
    )
    return _seq(tbs, sha256_rsa, _der(0x03, b"\x00" + rng.randbytes(256)))


def _chain(rng: random.Random, sni: str, country: str, org: str) -> list[bytes]:
    ca = (country, f"{org} Trust Services", f"{org} Issuing CA R4")
    root = ("US", "Example Root Authority", "Example Global Root G2")
    return [
        _fake_certificate(rng, (country, org, sni), ca, sni),
        _fake_certificate(rng, ca, root, None),
    ]


# --- TLS messages ---------------------------------------------------------------------


def _record(ctype: int, body: bytes, version: int = TLS12) -> bytes:
    return _u8(ctype) + _u16(version) + _v16(body)


def _handshake(msg_type: int, body: bytes) -> bytes:
    return _u8(msg_type) + _v24(body)


def _ext(etype: int, data: bytes) -> bytes:
    return _u16(etype) + _v16(data)


def _ext_sni(name: str) -> bytes:
    return _ext(0, _v16(b"\x00" + _v16(name.encode())))


def _ext_alpn(protocols: Sequence[str]) -> bytes:
    return _ext(16, _v16(b"".join(_v8(p.encode()) for p in protocols)))


def _ext_key_share(shares: Sequence[tuple[int, bytes]]) -> bytes:
    return _ext(51, _v16(b"".join(_u16(g) + _v16(k) for g, k in shares)))


def _client_hello(rng: random.Random, version: int, ciphers: Sequence[int],
                  extensions: Sequence[bytes], session_id: bool = True,
                  record_version: int = TLS10) -> bytes:
    """A ClientHello record. Record version 0x0301 is what real 1.2/1.3 clients send."""
    body = (
        _u16(version) + rng.randbytes(32) + _v8(rng.randbytes(32) if session_id else b"")
        + _v16(_u16s(ciphers)) + _v8(b"\x00") + _v16(b"".join(extensions))
    )
    return _record(CT_HANDSHAKE, _handshake(1, body), record_version)


FIREFOX_CIPHERS = (0x1301, 0x1303, 0x1302, 0xC02B, 0xC02F, 0xCCA9, 0xCCA8, 0xC02C, 0xC030,
                   0xC00A, 0xC009, 0xC013, 0xC014, 0x009C, 0x009D, 0x002F, 0x0035)
FIREFOX_SIGALGS = (0x0403, 0x0503, 0x0603, 0x0804, 0x0805, 0x0806, 0x0401, 0x0501, 0x0601,
                   0x0203, 0x0201)
OPENSSL_CIPHERS = (0x1302, 0x1303, 0x1301, 0xC02C, 0xC030, 0x009F, 0xCCA9, 0xCCA8, 0xCCAA,
                   0xC02B, 0xC02F, 0x009E, 0xC024, 0xC028, 0x006B, 0xC023, 0xC027, 0x0067,
                   0xC00A, 0xC014, 0x0039, 0xC009, 0xC013, 0x0033, 0x009D, 0x009C, 0x003D,
                   0x003C, 0x0035, 0x002F, 0x00FF)
OPENSSL_SIGALGS = (0x0403, 0x0503, 0x0603, 0x0807, 0x0808, 0x0809, 0x080A, 0x080B, 0x0804,
                   0x0805, 0x0806, 0x0401, 0x0501, 0x0601)
CHROME_CIPHERS = (0x1301, 0x1302, 0x1303, 0xC02B, 0xC02F, 0xC02C, 0xC030, 0xCCA9, 0xCCA8,
                  0xC013, 0xC014, 0x009C, 0x009D, 0x002F, 0x0035)
CHROME_SIGALGS = (0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601)
LEGACY_CIPHERS = (0xC014, 0xC013, 0x0035, 0x002F, 0x000A, 0x0039, 0x0033, 0x0005, 0x0004)
GREASE = tuple(0x0A0A + 0x1010 * i for i in range(16))


def _firefox_hello(rng: random.Random, sni: str) -> bytes:
    """Firefox-like TLS 1.3 ClientHello, padded to 512 bytes as NSS does."""
    extensions = [
        _ext_sni(sni), _ext(23, b""), _ext(0xFF01, b"\x00"),
        _ext(10, _v16(_u16s((X25519, SECP256R1, 0x0018, 0x0019, 0x0100, 0x0101)))),
        _ext(11, _v8(b"\x00")), _ext(35, b""), _ext_alpn(("h2", "http/1.1")),
        _ext(5, b"\x01\x00\x00\x00\x00"), _ext(34, _v16(_u16s((0x0403, 0x0503, 0x0603)))),
        _ext_key_share(((X25519, rng.randbytes(32)), (SECP256R1, b"\x04" + rng.randbytes(64)))),
        _ext(43, _v8(_u16s((TLS13, TLS12)))), _ext(13, _v16(_u16s(FIREFOX_SIGALGS))),
        _ext(45, _v8(b"\x01")), _ext(28, _u16(0x4001)),
    ]
    unpadded = 4 + 2 + 32 + 33 + 2 + 2 * len(FIREFOX_CIPHERS) + 2 + 2 + sum(map(len, extensions))
    pad = 512 - unpadded - 4
    return _client_hello(rng, TLS12, FIREFOX_CIPHERS, [*extensions, _ext(21, bytes(pad))])


def _openssl_hello(rng: random.Random, sni: str, alpn: Sequence[str] = ("http/1.1",)) -> bytes:
    """An OpenSSL 3 client (a sync agent or script) offering TLS 1.3 and 1.2."""
    extensions = [
        _ext_sni(sni), _ext(11, _v8(b"\x00\x01\x02")),
        _ext(10, _v16(_u16s((X25519, SECP256R1, 0x001E, 0x0019, 0x0018, 0x0100)))),
        _ext(35, b""), _ext_alpn(alpn), _ext(22, b""), _ext(23, b""),
        _ext(13, _v16(_u16s(OPENSSL_SIGALGS))), _ext(43, _v8(_u16s((TLS13, TLS12)))),
        _ext(45, _v8(b"\x01")), _ext_key_share(((X25519, rng.randbytes(32)),)),
    ]
    return _client_hello(rng, TLS12, OPENSSL_CIPHERS, extensions)


def _legacy_hello(rng: random.Random, sni: str) -> bytes:
    """A TLS 1.0-only client of the Windows 7 era: no supported_versions, CBC suites."""
    extensions = [
        _ext_sni(sni), _ext(10, _v16(_u16s((SECP256R1, 0x0018)))), _ext(11, _v8(b"\x00")),
        _ext(35, b""), _ext(0xFF01, b"\x00"),
    ]
    return _client_hello(rng, TLS10, LEGACY_CIPHERS, extensions, session_id=False)


def _chrome_pq_hello(rng: random.Random, sni: str) -> bytes:
    """A Chrome 131+ ClientHello: GREASE, X25519MLKEM768, ECH GREASE, about 1.8 KB.

    Chrome shuffles its extensions; this order puts the 1.2 KB key share and the ECH
    extension before server_name, so the SNI lands in the second TCP segment, which is
    what breaks parsers that read only the first segment.
    """
    g_cipher, g_ext1, g_group, g_ext2, g_version = rng.sample(GREASE, 5)
    mlkem = rng.randbytes(1184) + rng.randbytes(32)
    extensions = [
        _ext(g_ext1, b""),
        _ext(10, _v16(_u16s((g_group, X25519MLKEM768, X25519, SECP256R1, 0x0018)))),
        _ext_key_share(((g_group, b"\x00"), (X25519MLKEM768, mlkem), (X25519, rng.randbytes(32)))),
        _ext(0x44CD, _v16(_v8(b"h2"))),
        _ext(43, _v8(_u16s((g_version, TLS13, TLS12)))),
        _ext(EXT_ECH, b"\x00" + _u16s((1, 1)) + _u8(rng.randrange(256))
             + _v16(rng.randbytes(32)) + _v16(rng.randbytes(208))),
        _ext(27, _v8(_u16(2))), _ext(23, b""), _ext(0xFF01, b"\x00"),
        _ext_sni(sni), _ext(11, _v8(b"\x00")), _ext(45, _v8(b"\x01")), _ext(18, b""),
        _ext(5, b"\x01\x00\x00\x00\x00"), _ext(13, _v16(_u16s(CHROME_SIGALGS))),
        _ext(35, b""), _ext_alpn(("h2", "http/1.1")), _ext(g_ext2, b"\x00"),
    ]
    return _client_hello(rng, TLS12, (g_cipher, *CHROME_CIPHERS), extensions)


def _server_hello(rng: random.Random, client_hello: bytes, version: int, cipher: int,
                  extensions: Sequence[bytes]) -> bytes:
    """A ServerHello record echoing the client's session id (TLS 1.3 middlebox mode)."""
    sid_len = client_hello[43]
    session_id = client_hello[44:44 + sid_len]
    legacy = min(version, TLS12)
    body = _u16(legacy) + rng.randbytes(32) + _v8(session_id) + _u16(cipher) + b"\x00"
    body += _v16(b"".join(extensions))
    return _record(CT_HANDSHAKE, _handshake(2, body), legacy)


def _server_hello13(rng: random.Random, client_hello: bytes, group: int = X25519,
                    cipher: int = 0x1301) -> bytes:
    share = 1088 + 32 if group == X25519MLKEM768 else 32  # ML-KEM ciphertext + X25519
    extensions = [_ext(43, _u16(TLS13)), _ext(51, _u16(group) + _v16(rng.randbytes(share)))]
    return _server_hello(rng, client_hello, TLS13, cipher, extensions)


# TLS record protection as seen on the wire: TLS 1.3 adds a content-type byte and a
# 16-byte AEAD tag, TLS 1.2 GCM an 8-byte explicit nonce and the tag, TLS 1.0 CBC-SHA a
# 20-byte MAC and padding to the 16-byte block.
def _sealed_len(version: int, plain: int) -> int:
    if version == TLS13:
        return plain + 17
    if version == TLS12:
        return plain + 24
    return (plain + 20) // 16 * 16 + 16


def _sealed(rng: random.Random, version: int, plain: int, ctype: int = CT_APPDATA) -> bytes:
    """Encrypted records carrying ``plain`` bytes, at most 16 KiB of plaintext each."""
    out = b""
    wire_version = min(version, TLS12)
    while plain > 0:
        size = min(plain, 16384)
        out += _record(ctype, rng.randbytes(_sealed_len(version, size)), wire_version)
        plain -= size
    return out


@dataclass(frozen=True)
class _Tls:
    """One TLS conversation: the version and who says what, as byte counts or bytes."""

    version: int
    client_hello: bytes
    server_flight: bytes
    client_finish: bytes
    server_finish: bytes
    exchanges: Sequence[tuple[int, int, int]]  # request bytes, response bytes, think µs


def _tls13(rng: random.Random, hello: bytes, cert_len: int,
           exchanges: Sequence[tuple[int, int, int]], group: int = X25519) -> _Tls:
    """Flights of a TLS 1.3 handshake; everything after the ServerHello is encrypted."""
    ccs = _record(CT_CCS, b"\x01")
    server = _server_hello13(rng, hello, group) + ccs
    for size in (6 + rng.randrange(30), cert_len, 264, 36):  # EE, Certificate, CV, Finished
        server += _sealed(rng, TLS13, size)
    tickets = _sealed(rng, TLS13, 233) + _sealed(rng, TLS13, 233)
    return _Tls(TLS13, hello, server, ccs + _sealed(rng, TLS13, 36), tickets, exchanges)


def _tls12(rng: random.Random, hello: bytes, chain: list[bytes], version: int,
           extensions: Sequence[bytes], exchanges: Sequence[tuple[int, int, int]]) -> _Tls:
    """Flights of a TLS 1.2 (ECDHE) or TLS 1.0 (RSA key exchange) full handshake."""
    ecdhe = version == TLS12
    cipher = 0xC02F if ecdhe else 0x002F
    certificate = _handshake(11, _v24(b"".join(_v24(c) for c in chain)))
    messages = certificate
    if ecdhe:
        params = b"\x03" + _u16(X25519) + _v8(rng.randbytes(32))
        messages += _handshake(12, params + _u16(0x0804) + _v16(rng.randbytes(256)))
    messages += _handshake(14, b"")
    server = _server_hello(rng, hello, version, cipher, extensions)
    server += _record(CT_HANDSHAKE, messages, version)
    key_exchange = _v8(rng.randbytes(32)) if ecdhe else _v16(rng.randbytes(256))
    ccs = _record(CT_CCS, b"\x01", version)
    finished = _sealed(rng, version, 16, CT_HANDSHAKE)
    client = _record(CT_HANDSHAKE, _handshake(16, key_exchange), version) + ccs + finished
    server_finish = ccs + _sealed(rng, version, 16, CT_HANDSHAKE)
    return _Tls(version, hello, server, client, server_finish, exchanges)


def _run_tls(tcp: _Tcp, tls: _Tls, server_ms: float) -> None:
    """Drive a TLS conversation over ``tcp``, up to but not including the close."""
    proc = int(server_ms * 1000)
    rng = tcp.rng
    tcp.connect()
    tcp.send(True, tls.client_hello, think_us=180)
    tcp.send(False, tls.server_flight, think_us=proc)
    if tls.version != TLS13:  # the extra round trip of a full TLS 1.2 handshake
        tcp.send(True, tls.client_finish, think_us=900)
        tcp.send(False, tls.server_finish, think_us=proc // 2)
    for i, (request, response, think) in enumerate(tls.exchanges):
        first13 = i == 0 and tls.version == TLS13
        tcp.send(True, (tls.client_finish if first13 else b"")
                 + _sealed(rng, tls.version, request), think_us=think)
        tcp.send(False, (tls.server_finish if first13 else b"")
                 + _sealed(rng, tls.version, response), think_us=proc)


def _close_notify(tcp: _Tcp, version: int, from_client: bool, think_us: int) -> None:
    """The TLS alert a polite peer sends before it closes the socket."""
    if version == TLS13:
        alert = _sealed(tcp.rng, TLS13, 2)
    else:
        alert = _sealed(tcp.rng, version, 2, CT_ALERT)
    tcp.send(from_client, alert, think_us=think_us)


def _version_name(version: int) -> str:
    return {TLS10: "TLS 1.0", TLS12: "TLS 1.2", TLS13: "TLS 1.3"}[version]


def _tls_ledger(name: str, client: _Host, server: _Host, rng: random.Random, sni: str,
                version: int, country: str | None, port: int = 443) -> _Ledger:
    return _Ledger(name, client, server, _ephemeral(rng, client), port, "tcp", "tls", country,
                   sni, sni, _version_name(version))


# --- the flows ------------------------------------------------------------------------


def _flow_mo_bank(cap: _Capture, t0: int) -> None:
    """1. Compliant: a Firefox user on the Macau bank's portal, TLS 1.3."""
    rng, sni = _rng("mo-bank"), "portal.bank-mo.example"
    _dns_a(cap, LAPTOP, t0, sni, MO_BANK, delay_us=4_200)
    ledger = _tls_ledger("mo-bank", LAPTOP, MO_BANK, rng, sni, TLS13, "MO")
    tcp = _Tcp(cap, ledger, rng, t0 + 4_600, rtt_us=3_100)
    exchanges = ((610, 6_400, 400), (1_850, 2_300, 2_400_000), (540, 3_600, 3_100_000))
    tls = _tls13(rng, _firefox_hello(rng, sni), 3_150, exchanges)
    _run_tls(tcp, tls, server_ms=6)
    _close_notify(tcp, TLS13, True, think_us=4_800_000)
    tcp.close(True)


def _flow_us_crm(cap: _Capture, t0: int) -> None:
    """2. Violation: the CRM sync agent uploads the customer list to a US SaaS."""
    rng, sni = _rng("us-crm"), "api.crm-saas-us.example"
    edge = "crm-prod.edge.crm-saas-us.example"
    answers = [(sni, DNS_CNAME, 3600, [edge]), _a(edge, US_CRM.ip, 60)]
    _dns_lookup(cap, ACCOUNTS_PC, t0, sni, DNS_A, answers, delay_us=41_000)
    ledger = _tls_ledger("us-crm", ACCOUNTS_PC, US_CRM, rng, sni, TLS13, "US")
    tcp = _Tcp(cap, ledger, rng, t0 + 41_500, rtt_us=168_000)
    exchanges = ((720, 1_350, 300), (17_200, 880, 150_000), (690, 1_500, 900_000))
    tls = _tls13(rng, _openssl_hello(rng, sni), 3_900, exchanges)
    _run_tls(tcp, tls, server_ms=12)
    _close_notify(tcp, TLS13, True, think_us=2_000)
    tcp.close(True)


def _flow_cn_logistics(cap: _Capture, t0: int) -> None:
    """3. Conditional: shipping orders to a mainland China logistics API, TLS 1.3."""
    rng, sni = _rng("cn-logistics"), "api.gba-logistics.example"
    _dns_a(cap, RECEPTION_PC, t0, sni, CN_LOGISTICS, delay_us=33_000)
    ledger = _tls_ledger("cn-logistics", RECEPTION_PC, CN_LOGISTICS, rng, sni, TLS13, "CN")
    tcp = _Tcp(cap, ledger, rng, t0 + 33_800, rtt_us=27_500)
    exchanges = ((780, 3_100, 250), (4_200, 640, 1_700_000))
    tls = _tls13(rng, _openssl_hello(rng, sni, ("h2", "http/1.1")), 2_700, exchanges)
    _run_tls(tcp, tls, server_ms=9)
    _close_notify(tcp, TLS13, False, think_us=5_000_000)
    tcp.close(False)


def _flow_hk_supplier(cap: _Capture, t0: int) -> None:
    """4. A 1.3-capable client, but the Hong Kong ERP server only speaks TLS 1.2."""
    rng, sni = _rng("hk-supplier"), "erp.hk-supplier.example"
    _dns_a(cap, LAPTOP, t0, sni, HK_SUPPLIER, delay_us=11_000)
    ledger = _tls_ledger("hk-supplier", LAPTOP, HK_SUPPLIER, rng, sni, TLS12, "HK")
    tcp = _Tcp(cap, ledger, rng, t0 + 11_400, rtt_us=8_700)
    extensions = [_ext(0xFF01, b"\x00"), _ext(11, _v8(b"\x00")), _ext(23, b""),
                  _ext_alpn(("http/1.1",))]
    chain = _chain(rng, sni, "HK", "HK Supplier Ltd")
    exchanges = ((640, 5_200, 200), (2_100, 520, 2_600_000))
    tls = _tls12(rng, _firefox_hello(rng, sni), chain, TLS12, extensions, exchanges)
    _run_tls(tcp, tls, server_ms=4)
    _close_notify(tcp, TLS12, True, think_us=1_500_000)
    tcp.close(True)


def _flow_de_legacy(cap: _Capture, t0: int) -> None:
    """5. Violation: an old payroll client that can only do TLS 1.0, to Germany."""
    rng, sni = _rng("de-legacy"), "lohn.payroll-de.example"
    _dns_a(cap, LEGACY_PC, t0, sni, DE_PAYROLL, delay_us=52_000)
    ledger = _tls_ledger("de-legacy", LEGACY_PC, DE_PAYROLL, rng, sni, TLS10, "DE")
    tcp = _Tcp(cap, ledger, rng, t0 + 52_600, rtt_us=196_000)
    chain = _chain(rng, sni, "DE", "Payroll DE GmbH")
    exchanges = ((430, 3_900, 300), (2_600, 610, 1_200_000))
    tls = _tls12(rng, _legacy_hello(rng, sni), chain, TLS10, [_ext(0xFF01, b"\x00")], exchanges)
    _run_tls(tcp, tls, server_ms=15)
    _close_notify(tcp, TLS10, True, think_us=400_000)
    tcp.reset(True, think_us=300)  # old WinINet aborts instead of closing


def _flow_jp_chrome(cap: _Capture, t0: int) -> None:
    """6. Chrome with a post-quantum key share: a 1.8 KB hello over two segments."""
    rng, sni = _rng("jp-travel"), "www.kyoto-travel.example"
    _dns_a(cap, LAPTOP, t0, sni, JP_TRAVEL, delay_us=24_000)
    _dns_lookup(cap, LAPTOP, t0 + 150, sni, DNS_HTTPS, [],
                [_soa("kyoto-travel.example")], delay_us=26_000)
    ledger = _tls_ledger("jp-travel", LAPTOP, JP_TRAVEL, rng, sni, TLS13, "JP")
    tcp = _Tcp(cap, ledger, rng, t0 + 26_500, rtt_us=52_000)
    hello = _chrome_pq_hello(rng, sni)
    if hello.find(sni.encode()) < tcp.payload_max:
        raise AssertionError("the sample promises the SNI in the second segment")
    exchanges = ((1_060, 11_600, 300), (480, 3_700, 60_000), (520, 1_900, 4_200_000))
    tls = _tls13(rng, hello, 3_400, exchanges, group=X25519MLKEM768)
    _run_tls(tcp, tls, server_ms=5)
    _close_notify(tcp, TLS13, True, think_us=6_000_000)
    tcp.close(True)


def _flow_sg_http(cap: _Capture, t0: int) -> None:
    """7. Violation: an event registration form posted in plain HTTP to Singapore."""
    rng, host = _rng("sg-http"), "forms.sg-events.example"
    _dns_a(cap, ACCOUNTS_PC, t0, host, SG_EVENTS, delay_us=36_000)
    ledger = _Ledger("sg-http", ACCOUNTS_PC, SG_EVENTS, _ephemeral(rng, ACCOUNTS_PC), 80,
                     "tcp", "http", "SG", host)
    tcp = _Tcp(cap, ledger, rng, t0 + 36_400, rtt_us=38_000)
    tcp.connect()
    tcp.send(True, _http_get(host), think_us=150)
    tcp.send(False, _http_response(_form_page(), False, "09:00:41"), think_us=7_000)
    tcp.send(True, _http_post(host, _form_body()), think_us=21_000_000)
    tcp.send(False, _http_response(_thanks_page(), True, "09:01:02"), think_us=16_000)
    tcp.close(False, think_us=100)


def _flow_us_smtp(cap: _Capture, t0: int) -> None:
    """8. Violation: the mail host relays payroll to a US partner with no STARTTLS."""
    rng, domain = _rng("us-smtp"), "partner-us.example"
    mx = f"mx1.{domain}"
    _dns_lookup(cap, MAIL_HOST, t0, domain, DNS_MX, [(domain, DNS_MX, 3600, [_u16(10), mx])],
                additional=[_a(mx, US_MX.ip, 3600)], delay_us=64_000)
    ledger = _Ledger("us-smtp", MAIL_HOST, US_MX, _ephemeral(rng, MAIL_HOST), 25, "tcp",
                     "smtp", "US", mx)
    tcp = _Tcp(cap, ledger, rng, t0 + 64_600, rtt_us=181_000)
    tcp.connect()
    for from_client, line in _smtp_dialogue(mx, domain):
        tcp.send(from_client, line, think_us=300 if from_client else 2_500)
    tcp.close(False, think_us=200)


def _flow_de_ipv6(cap: _Capture, t0: int) -> None:
    """9. An IPv6 laptop backing up files to German cloud storage, TLS 1.3."""
    rng, sni = _rng("de-ipv6"), "sync.speicher-de.example"
    _dns_a(cap, V6_LAPTOP, t0, sni, DE_STORAGE6, delay_us=47_000)
    ledger = _tls_ledger("de-ipv6", V6_LAPTOP, DE_STORAGE6, rng, sni, TLS13, "DE")
    tcp = _Tcp(cap, ledger, rng, t0 + 47_500, rtt_us=204_000)
    exchanges = ((690, 1_400, 300), (8_300, 470, 800_000))
    tls = _tls13(rng, _firefox_hello(rng, sni), 2_900, exchanges)
    _run_tls(tcp, tls, server_ms=8)
    _close_notify(tcp, TLS13, True, think_us=300_000)
    tcp.close(True)


def _flow_mo_vlan(cap: _Capture, t0: int) -> None:
    """10. The VLAN-20 kiosk files an e-invoice with a Macau service, TLS 1.3."""
    rng, sni = _rng("mo-vlan"), "einvoice.gov-mo.example"
    _dns_a(cap, KIOSK, t0, sni, MO_GOV, delay_us=5_300)
    ledger = _tls_ledger("mo-vlan", KIOSK, MO_GOV, rng, sni, TLS13, "MO")
    tcp = _Tcp(cap, ledger, rng, t0 + 5_700, rtt_us=4_100)
    exchanges = ((520, 2_600, 250), (2_300, 880, 1_900_000))
    tls = _tls13(rng, _openssl_hello(rng, sni), 2_600, exchanges)
    _run_tls(tcp, tls, server_ms=7)
    _close_notify(tcp, TLS13, True, think_us=200)
    tcp.close(True)


def _flow_dead_syn(cap: _Capture, t0: int) -> None:
    """11a. A backup script still pointed at a decommissioned address: SYNs, no answer."""
    rng = _rng("dead-syn")
    ledger = _Ledger("dead-syn", LEGACY_PC, US_DEAD, _ephemeral(rng, LEGACY_PC), 443, "tcp",
                     None, "US")
    _Tcp(cap, ledger, rng, t0, rtt_us=170_000).unanswered_syn(retries=2)


def _flow_ping(cap: _Capture, t0: int) -> None:
    """11b. Someone checks the Internet: Windows ``ping 8.8.8.8``, four echoes."""
    rng = _rng("ping")
    ledger = _Ledger("ping", RECEPTION_PC, GOOGLE_DNS, None, None, "icmp", "icmp", "US")
    link = _Link(cap, ledger, rng)
    payload = b"abcdefghijklmnopqrstuvwabcdefghi"
    for n in range(4):
        seq = 0x01A5 + n
        t = t0 + n * 1_000_000 + rng.randrange(2_000)
        rtt = 31_000 + rng.randrange(900)
        for from_client, icmp_type, delay in ((True, 8, 0), (False, 0, rtt)):
            message = struct.pack("!BBHHH", icmp_type, 0, 0, 1, seq) + payload
            link.emit(t + delay, from_client, PROTO_ICMP, message, 2)


def _flow_print_job(cap: _Capture, t0: int) -> None:
    """12a. Internal: the reception PC prints an invoice, raw PostScript to port 9100."""
    rng = _rng("print-job")
    ledger = _Ledger("print-job", RECEPTION_PC, PRINTER, _ephemeral(rng, RECEPTION_PC), 9100,
                     "tcp", "print", None)
    tcp = _Tcp(cap, ledger, rng, t0, rtt_us=420)
    tcp.connect()
    tcp.send(True, _print_job(rng), think_us=600)
    tcp.close(True, think_us=2_000)


def _flow_internal_https(cap: _Capture, t0: int) -> None:
    """12b. Internal: the accounts PC on the NAS's web UI, TLS 1.3, ending in a reset."""
    rng, sni = _rng("nas-https"), "nas.office.example"
    _dns_a(cap, ACCOUNTS_PC, t0, sni, NAS, delay_us=350)
    ledger = _tls_ledger("nas-https", ACCOUNTS_PC, NAS, rng, sni, TLS13, None)
    tcp = _Tcp(cap, ledger, rng, t0 + 800, rtt_us=310)
    tls = _tls13(rng, _openssl_hello(rng, sni, ("h2", "http/1.1")), 1_900, ((590, 2_600, 300),))
    _run_tls(tcp, tls, server_ms=2)
    tcp.reset(True, think_us=2_500_000)


# Start of each flow, in microseconds after START: about 80 s of office morning.
_SCHEDULE = (
    (500_000, _flow_mo_bank),
    (3_200_000, _flow_print_job),
    (6_800_000, _flow_us_crm),
    (12_400_000, _flow_ping),
    (15_000_000, _flow_cn_logistics),
    (21_500_000, _flow_hk_supplier),
    (27_300_000, _flow_de_legacy),
    (33_900_000, _flow_jp_chrome),
    (41_200_000, _flow_sg_http),
    (48_600_000, _flow_us_smtp),
    (55_100_000, _flow_de_ipv6),
    (62_700_000, _flow_mo_vlan),
    (70_400_000, _flow_dead_syn),
    (76_000_000, _flow_internal_https),
)


# --- application payloads -------------------------------------------------------------


_PEOPLE = (
    ("Chan Tai Man", "1234567(3)"), ("Wong Siu Ming", "5178204(1)"),
    ("Leong Ka Wai", "1380926(7)"), ("Lei Mei Ling", "7345512(0)"),
    ("Ho Chi Kin", "1509873(4)"), ("Lam Wing Sze", "5029461(9)"),
)


def _http_get(host: str) -> bytes:
    return (
        f"GET /register HTTP/1.1\r\nHost: {host}\r\n"
        "User-Agent: Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
        "(KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36\r\n"
        "Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n"
        "Accept-Language: zh-MO,zh;q=0.9,en;q=0.8\r\nConnection: keep-alive\r\n\r\n"
    ).encode()


def _form_body() -> bytes:
    return (
        b"full_name=Chan+Tai+Man&id_no=1234567%283%29&dob=1984-07-12"
        b"&email=tm.chan%40office-mo.example&phone=%2B853+6612+3456"
        b"&company=Office+MO+Trading+Ltd&dietary=none&consent=on"
    )


def _http_post(host: str, body: bytes) -> bytes:
    head = (
        f"POST /register HTTP/1.1\r\nHost: {host}\r\n"
        "User-Agent: Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
        "(KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36\r\n"
        f"Origin: http://{host}\r\nReferer: http://{host}/register\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\n"
        f"Content-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n"
    )
    return head.encode() + body


def _form_page() -> bytes:
    fields = "".join(
        f'<label for="{f}">{label}</label><input id="{f}" name="{f}" required>\n'
        for f, label in (("full_name", "Full name"), ("id_no", "ID number"), ("dob", "Birth"),
                         ("email", "E-mail"), ("phone", "Phone"), ("company", "Company"))
    )
    sessions = "".join(
        f'<li class="session"><h3>Session {n}: Cross-border trade briefing</h3>'
        f"<p>Room {200 + n}, 10:{n:02d}. Speakers from Macau, Hong Kong and Singapore.</p></li>\n"
        for n in range(1, 31)
    )
    return (
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<title>Register: Regional SME Forum 2026</title></head><body>\n"
        f"<ul>\n{sessions}</ul>\n<form method=\"post\" action=\"/register\">\n{fields}"
        '<input type="checkbox" name="consent"> I agree to the privacy notice\n'
        "<button>Register</button></form></body></html>\n"
    ).encode()


def _thanks_page() -> bytes:
    return (
        b"<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>Registered</title></head>"
        b"<body><h1>Thank you, Chan Tai Man</h1><p>Your registration number is SG-26-04417. "
        b"A confirmation was sent to tm.chan@office-mo.example.</p></body></html>\n"
    )


def _http_response(body: bytes, close: bool, clock: str) -> bytes:
    head = (
        f"HTTP/1.1 200 OK\r\nServer: nginx/1.24.0\r\nDate: Mon, 02 Mar 2026 {clock} GMT\r\n"
        "Content-Type: text/html; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nConnection: {'close' if close else 'keep-alive'}\r\n\r\n"
    )
    return head.encode() + body


def _smtp_dialogue(mx: str, domain: str) -> list[tuple[bool, bytes]]:
    """An SMTP session where the server offers no STARTTLS, so all of it is plaintext."""
    rows = "".join(
        f"{i + 1},{name},{ident},+853 66{i}{i}-{4100 + 37 * i},MOP {18_500 + 1_250 * i}\r\n"
        for i, (name, ident) in enumerate(_PEOPLE * 4)
    )
    message = (
        f"From: HR <hr@office-mo.example>\r\nTo: Payroll <payroll@{domain}>\r\n"
        "Subject: March payroll file\r\nDate: Mon, 02 Mar 2026 17:00:48 +0800\r\n"
        "Message-ID: <20260302090048.4411@mail.office-mo.example>\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/csv; charset=utf-8\r\n\r\n"
        f"no,name,id_card,phone,salary\r\n{rows}\r\n.\r\n"
    )
    lines = [
        (False, f"220 {mx} ESMTP Postfix\r\n"),
        (True, "EHLO mail.office-mo.example\r\n"),
        (False, f"250-{mx}\r\n250-PIPELINING\r\n250-SIZE 52428800\r\n250-8BITMIME\r\n"
                "250 ENHANCEDSTATUSCODES\r\n"),
        (True, "MAIL FROM:<hr@office-mo.example> SIZE=%d\r\n" % len(message)),
        (False, "250 2.1.0 Ok\r\n"),
        (True, f"RCPT TO:<payroll@{domain}>\r\n"),
        (False, "250 2.1.5 Ok\r\n"),
        (True, "DATA\r\n"),
        (False, "354 End data with <CR><LF>.<CR><LF>\r\n"),
        (True, message),
        (False, "250 2.0.0 Ok: queued as 4F2A81C03B\r\n"),
        (True, "QUIT\r\n"),
        (False, "221 2.0.0 Bye\r\n"),
    ]
    return [(side, text.encode()) for side, text in lines]


def _print_job(rng: random.Random) -> bytes:
    """A PJL-wrapped PostScript job as a Windows print spooler sends it to port 9100."""
    uel = b"\x1b%-12345X"
    header = (
        uel + b"@PJL JOB NAME=\"invoice-2026-0317.pdf\"\r\n@PJL SET USERNAME=\"reception\"\r\n"
        b"@PJL ENTER LANGUAGE=POSTSCRIPT\r\n%!PS-Adobe-3.0\n%%Creator: PScript5.dll\n"
        b"%%Title: invoice-2026-0317.pdf\n%%Pages: 1\n%%EndComments\n"
        b"/Helvetica findfont 10 scalefont setfont\n72 760 moveto (Invoice 2026-0317) show\n"
        b"120 80 8 [120 0 0 -80 0 80] currentfile /ASCIIHexDecode filter false 3 colorimage\n"
    )
    image = rng.randbytes(3_000).hex().encode()
    lines = b"\n".join(image[i:i + 78] for i in range(0, len(image), 78))
    return header + lines + b">\nshowpage\n%%EOF\n" + uel + b"@PJL EOJ\r\n" + uel


# --- output ---------------------------------------------------------------------------


def _build() -> _Capture:
    cap = _Capture()
    for offset, flow in _SCHEDULE:
        flow(cap, offset)
    return cap


def build_sample() -> list[tuple[float, bytes]]:
    """Every frame of the sample as (epoch seconds, Ethernet frame), in capture order."""
    return _build().frames()


def sample_flows() -> list[dict[str, Any]]:
    """The per-flow ground truth as the generator counted it (``EXPECTED`` spells it out)."""
    return [ledger.as_dict() for ledger in _build().ledgers]


def write_pcap(path: str | Path, frames: Sequence[tuple[float, bytes]]) -> None:
    """Write classic little-endian pcap, microsecond timestamps, LINKTYPE_ETHERNET."""
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, LINKTYPE_ETHERNET)]
    for ts, frame in frames:
        sec = int(ts)
        usec = round((ts - sec) * 1e6)
        if usec == 1_000_000:
            sec, usec = sec + 1, 0
        out.append(struct.pack("<IIII", sec, usec, len(frame), len(frame)))
        out.append(frame)
    Path(path).write_bytes(b"".join(out))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m residency_monitor.sample",
        description="Regenerate the packaged sample capture (deterministic).",
    )
    parser.add_argument("--out", type=Path, default=SAMPLE_PATH, help="default: %(default)s")
    args = parser.parse_args(argv)
    frames = build_sample()
    write_pcap(args.out, frames)
    print(f"wrote {len(frames)} packets to {args.out}", file=sys.stderr)
    return 0


# Ground truth per flow, in the order the flows are generated. Bytes are IP-layer
# lengths; "out" is the client's direction. ``country`` is what iptocc's RIR data says
# of the server; None for private addresses.
EXPECTED: list[dict[str, Any]] = [
    {"name": "dns A portal.bank-mo.example", "client_ip": "192.168.1.31", "client_port": 52143,
     "server_ip": "192.168.1.1", "server_port": 53, "transport": "udp", "vlan": None, "app": "dns",
     "host": "portal.bank-mo.example", "sni": None, "tls_version": None, "country": None,
     "packets_out": 1, "packets_in": 1, "bytes_out": 79, "bytes_in": 95},
    {"name": "mo-bank", "client_ip": "192.168.1.31", "client_port": 57728,
     "server_ip": "202.175.80.41", "server_port": 443, "transport": "tcp", "vlan": None,
     "app": "tls", "host": "portal.bank-mo.example", "sni": "portal.bank-mo.example",
     "tls_version": "TLS 1.3", "country": "MO", "packets_out": 17, "packets_in": 16,
     "bytes_out": 4563, "bytes_in": 17412},
    {"name": "print-job", "client_ip": "192.168.1.23", "client_port": 56551,
     "server_ip": "192.168.1.12", "server_port": 9100, "transport": "tcp", "vlan": None,
     "app": "print", "host": None, "sni": None, "tls_version": None, "country": None,
     "packets_out": 9, "packets_in": 4, "bytes_out": 6861, "bytes_in": 172},
    {"name": "dns A api.crm-saas-us.example", "client_ip": "10.10.3.21", "client_port": 59802,
     "server_ip": "192.168.1.1", "server_port": 53, "transport": "udp", "vlan": None, "app": "dns",
     "host": "api.crm-saas-us.example", "sni": None, "tls_version": None, "country": None,
     "packets_out": 1, "packets_in": 1, "bytes_out": 80, "bytes_in": 124},
    {"name": "us-crm", "client_ip": "10.10.3.21", "client_port": 65328,
     "server_ip": "13.107.42.14", "server_port": 443, "transport": "tcp", "vlan": None,
     "app": "tls", "host": "api.crm-saas-us.example", "sni": "api.crm-saas-us.example",
     "tls_version": "TLS 1.3", "country": "US", "packets_out": 25, "packets_in": 17,
     "bytes_out": 20118, "bytes_in": 9431},
    {"name": "ping", "client_ip": "192.168.1.23", "client_port": None, "server_ip": "8.8.8.8",
     "server_port": None, "transport": "icmp", "vlan": None, "app": "icmp", "host": None,
     "sni": None, "tls_version": None, "country": "US", "packets_out": 4, "packets_in": 4,
     "bytes_out": 240, "bytes_in": 240},
    {"name": "dns A api.gba-logistics.example", "client_ip": "192.168.1.23", "client_port": 57035,
     "server_ip": "192.168.1.1", "server_port": 53, "transport": "udp", "vlan": None, "app": "dns",
     "host": "api.gba-logistics.example", "sni": None, "tls_version": None, "country": None,
     "packets_out": 1, "packets_in": 1, "bytes_out": 82, "bytes_in": 98},
    {"name": "cn-logistics", "client_ip": "192.168.1.23", "client_port": 50598,
     "server_ip": "39.156.66.10", "server_port": 443, "transport": "tcp", "vlan": None,
     "app": "tls", "host": "api.gba-logistics.example", "sni": "api.gba-logistics.example",
     "tls_version": "TLS 1.3", "country": "CN", "packets_out": 12, "packets_in": 12,
     "bytes_out": 5905, "bytes_in": 8047},
    {"name": "dns A erp.hk-supplier.example", "client_ip": "192.168.1.31", "client_port": 44969,
     "server_ip": "192.168.1.1", "server_port": 53, "transport": "udp", "vlan": None, "app": "dns",
     "host": "erp.hk-supplier.example", "sni": None, "tls_version": None, "country": None,
     "packets_out": 1, "packets_in": 1, "bytes_out": 80, "bytes_in": 96},
    {"name": "hk-supplier", "client_ip": "192.168.1.31", "client_port": 44856,
     "server_ip": "203.198.20.40", "server_port": 443, "transport": "tcp", "vlan": None,
     "app": "tls", "host": "erp.hk-supplier.example", "sni": "erp.hk-supplier.example",
     "tls_version": "TLS 1.2", "country": "HK", "packets_out": 14, "packets_in": 11,
     "bytes_out": 4175, "bytes_in": 8526},
    {"name": "dns A lohn.payroll-de.example", "client_ip": "10.10.3.40", "client_port": 52824,
     "server_ip": "192.168.1.1", "server_port": 53, "transport": "udp", "vlan": None, "app": "dns",
     "host": "lohn.payroll-de.example", "sni": None, "tls_version": None, "country": None,
     "packets_out": 1, "packets_in": 1, "bytes_out": 80, "bytes_in": 96},
    {"name": "de-legacy", "client_ip": "10.10.3.40", "client_port": 62548,
     "server_ip": "85.214.132.117", "server_port": 443, "transport": "tcp", "vlan": None,
     "app": "tls", "host": "lohn.payroll-de.example", "sni": "lohn.payroll-de.example",
     "tls_version": "TLS 1.0", "country": "DE", "packets_out": 13, "packets_in": 9,
     "bytes_out": 4118, "bytes_in": 6777},
    {"name": "dns A www.kyoto-travel.example", "client_ip": "192.168.1.31", "client_port": 36941,
     "server_ip": "192.168.1.1", "server_port": 53, "transport": "udp", "vlan": None, "app": "dns",
     "host": "www.kyoto-travel.example", "sni": None, "tls_version": None, "country": None,
     "packets_out": 1, "packets_in": 1, "bytes_out": 81, "bytes_in": 97},
    {"name": "dns HTTPS www.kyoto-travel.example", "client_ip": "192.168.1.31",
     "client_port": 42095, "server_ip": "192.168.1.1", "server_port": 53, "transport": "udp",
     "vlan": None, "app": "dns", "host": "www.kyoto-travel.example", "sni": None,
     "tls_version": None, "country": None, "packets_out": 1, "packets_in": 1, "bytes_out": 81,
     "bytes_in": 132},
    {"name": "jp-travel", "client_ip": "192.168.1.31", "client_port": 37719,
     "server_ip": "133.242.10.20", "server_port": 443, "transport": "tcp", "vlan": None,
     "app": "tls", "host": "www.kyoto-travel.example", "sni": "www.kyoto-travel.example",
     "tls_version": "TLS 1.3", "country": "JP", "packets_out": 20, "packets_in": 21,
     "bytes_out": 5060, "bytes_in": 23919},
    {"name": "dns A forms.sg-events.example", "client_ip": "10.10.3.21", "client_port": 51626,
     "server_ip": "192.168.1.1", "server_port": 53, "transport": "udp", "vlan": None, "app": "dns",
     "host": "forms.sg-events.example", "sni": None, "tls_version": None, "country": None,
     "packets_out": 1, "packets_in": 1, "bytes_out": 80, "bytes_in": 96},
    {"name": "sg-http", "client_ip": "10.10.3.21", "client_port": 63947,
     "server_ip": "203.116.165.10", "server_port": 80, "transport": "tcp", "vlan": None,
     "app": "http", "host": "forms.sg-events.example", "sni": None, "tls_version": None,
     "country": "SG", "packets_out": 7, "packets_in": 8, "bytes_out": 1149, "bytes_in": 5921},
    {"name": "dns MX partner-us.example", "client_ip": "192.168.1.5", "client_port": 51498,
     "server_ip": "192.168.1.1", "server_port": 53, "transport": "udp", "vlan": None, "app": "dns",
     "host": "partner-us.example", "sni": None, "tls_version": None, "country": None,
     "packets_out": 1, "packets_in": 1, "bytes_out": 75, "bytes_in": 111},
    {"name": "us-smtp", "client_ip": "192.168.1.5", "client_port": 47472,
     "server_ip": "45.60.10.10", "server_port": 25, "transport": "tcp", "vlan": None,
     "app": "smtp", "host": "mx1.partner-us.example", "sni": None, "tls_version": None,
     "country": "US", "packets_out": 10, "packets_in": 11, "bytes_out": 2234, "bytes_in": 840},
    {"name": "dns AAAA sync.speicher-de.example", "client_ip": "fd00:10::5a3c:8f1e:2b47:91d0",
     "client_port": 59534, "server_ip": "fd00:10::1", "server_port": 53, "transport": "udp",
     "vlan": None, "app": "dns", "host": "sync.speicher-de.example", "sni": None,
     "tls_version": None, "country": None, "packets_out": 1, "packets_in": 1, "bytes_out": 101,
     "bytes_in": 129},
    {"name": "de-ipv6", "client_ip": "fd00:10::5a3c:8f1e:2b47:91d0", "client_port": 38631,
     "server_ip": "2a01:238:20a:202::10", "server_port": 443, "transport": "tcp", "vlan": None,
     "app": "tls", "host": "sync.speicher-de.example", "sni": "sync.speicher-de.example",
     "tls_version": "TLS 1.3", "country": "DE", "packets_out": 16, "packets_in": 11,
     "bytes_out": 10799, "bytes_in": 6665},
    {"name": "dns A einvoice.gov-mo.example", "client_ip": "10.10.20.15", "client_port": 33783,
     "server_ip": "192.168.1.1", "server_port": 53, "transport": "udp", "vlan": 20, "app": "dns",
     "host": "einvoice.gov-mo.example", "sni": None, "tls_version": None, "country": None,
     "packets_out": 1, "packets_in": 1, "bytes_out": 80, "bytes_in": 96},
    {"name": "mo-vlan", "client_ip": "10.10.20.15", "client_port": 48886,
     "server_ip": "60.246.5.10", "server_port": 443, "transport": "tcp", "vlan": 20, "app": "tls",
     "host": "einvoice.gov-mo.example", "sni": "einvoice.gov-mo.example", "tls_version": "TLS 1.3",
     "country": "MO", "packets_out": 12, "packets_in": 10, "bytes_out": 3904, "bytes_in": 7691},
    {"name": "dead-syn", "client_ip": "10.10.3.40", "client_port": 52908,
     "server_ip": "3.33.200.10", "server_port": 443, "transport": "tcp", "vlan": None, "app": None,
     "host": None, "sni": None, "tls_version": None, "country": "US", "packets_out": 3,
     "packets_in": 0, "bytes_out": 156, "bytes_in": 0},
    {"name": "dns A nas.office.example", "client_ip": "10.10.3.21", "client_port": 56593,
     "server_ip": "192.168.1.1", "server_port": 53, "transport": "udp", "vlan": None, "app": "dns",
     "host": "nas.office.example", "sni": None, "tls_version": None, "country": None,
     "packets_out": 1, "packets_in": 1, "bytes_out": 75, "bytes_in": 91},
    {"name": "nas-https", "client_ip": "10.10.3.21", "client_port": 53013,
     "server_ip": "192.168.1.10", "server_port": 443, "transport": "tcp", "vlan": None,
     "app": "tls", "host": "nas.office.example", "sni": "nas.office.example",
     "tls_version": "TLS 1.3", "country": None, "packets_out": 8, "packets_in": 6,
     "bytes_out": 1326, "bytes_in": 5821},
]


if __name__ == "__main__":
    sys.exit(main())
