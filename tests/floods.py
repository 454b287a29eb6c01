"""Hostile traffic, built deterministically: the floods a gateway monitor must survive.

Shared by ``tests/test_hostile.py``, ``tests/test_floods_e2e.py`` and
``benchmarks/bench_attacks.py``. Each attack is a generator of Ethernet frames
(checksums left zero: neither the decoder nor a veth peer receiving
``PACKET_OTHERHOST`` frames reads them) from a seeded ``random.Random``, so a
run is the same every time and the same file can be replayed with tcpreplay.

The victims are inside the default internal networks and never in the bundled
sample, so a flood's flows are inbound or internal (not judged by the policy)
and cannot be confused with the sample's flows, whose verdicts must come out
the same with or without the flood:

* ``syn``: TCP SYNs from random public sources and ports to one server.
* ``udp``: UDP datagrams from random public sources to random ports.
* ``segments``: TCP connections that each open a TLS ClientHello claiming 64 KB,
  then send it out of order with a gap that never fills, retransmit pieces
  with other bytes (overlaps), and send segments past the window and before the
  start: each tries to make reassembly hold as much as it may, for as long as
  it may.
* ``dns``: DNS answers from the office resolver, each for a unique name with
  ``ADDRS_PER_ANSWER`` unique addresses: they try to fill the name map.
"""

from __future__ import annotations

import heapq
import random
import struct
from collections.abc import Iterable, Iterator

Frame = tuple[float, int, bytes, int]

ETH = bytes.fromhex("02726dfffffe" "02726d00000a")  # foreign destination MAC, as netns_fixture
_IPV4 = struct.Struct("!BBHHHBBH4s4s")
_TCP = struct.Struct("!HHIIBBHHH")
_UDP = struct.Struct("!HHHH")
SYN, ACK, PSH = 0x02, 0x10, 0x08

VICTIM_TCP = bytes((10, 10, 3, 200))      # an internal server under attack
VICTIM_UDP = bytes((10, 10, 3, 201))
RESOLVER = bytes((10, 10, 3, 53))         # the office resolver (internal: its flows are not judged)
DNS_CLIENT = bytes((10, 10, 3, 54))
ADDRS_PER_ANSWER = 20
SEGMENT = 1400                            # payload bytes per segment of the segment flood
ATTACKS = ("syn", "udp", "segments", "dns")

#: Memory per unit held, measured by benchmarks/bench_attacks.py (RSS growth over what was
#: held, default bounds) and rounded up. What a flood can add to the process is at most
#:   max_flows x FLOW_BYTES + REASSEMBLY_FACTOR x reassembly_bytes_total
#:   + datagram bytes total + dns_max_addresses x DNS_ADDRESS_BYTES
FLOW_BYTES = 700            # a tracked flow: Flow object, two dict entries, keys (measured 558)
DNS_ADDRESS_BYTES = 600     # a name-map address with its name and client (measured 525)
REASSEMBLY_FACTOR = 2       # a held byte, plus the bytes object a re-parse joins it into


def bound_bytes(max_flows: int, reassembly_total: int, datagram_total: int,
                dns_addresses: int) -> int:
    """What the configuration lets a flood add to the process, at most."""
    return (max_flows * FLOW_BYTES + REASSEMBLY_FACTOR * reassembly_total + datagram_total
            + dns_addresses * DNS_ADDRESS_BYTES)


def ipv4(src: bytes, dst: bytes, proto: int, body: bytes, ident: int = 0) -> bytes:
    return ETH + b"\x08\x00" + _IPV4.pack(0x45, 0, 20 + len(body), ident & 0xFFFF, 0x4000, 64,
                                          proto, 0, src, dst) + body


def tcp(src: bytes, dst: bytes, sport: int, dport: int, seq: int, flags: int,
        payload: bytes = b"") -> bytes:
    head = _TCP.pack(sport, dport, seq & 0xFFFFFFFF, 0, 0x50, flags, 65535, 0, 0)
    return ipv4(src, dst, 6, head + payload)


def udp(src: bytes, dst: bytes, sport: int, dport: int, payload: bytes) -> bytes:
    return ipv4(src, dst, 17, _UDP.pack(sport, dport, 8 + len(payload), 0) + payload)


def public_address(rng: random.Random) -> bytes:
    """A random unicast address outside private, shared, loopback and multicast space."""
    while True:
        a = rng.getrandbits(32)
        first, second = a >> 24, a >> 16 & 0xFF
        if first in (0, 10, 100, 127) or first >= 224 or (first, second) in (
                (169, 254), (192, 168)) or (first == 172 and 16 <= second < 32):
            continue
        return a.to_bytes(4, "big")


# -- the attacks: frames only; timeline() gives them packet times ----------------------------

def syn_flood(n: int, seed: int = 1) -> Iterator[bytes]:
    rng = random.Random(seed)
    for _ in range(n):
        yield tcp(public_address(rng), VICTIM_TCP, rng.randrange(1024, 65536), 443,
                  rng.getrandbits(32), SYN)


def udp_flood(n: int, seed: int = 2) -> Iterator[bytes]:
    rng = random.Random(seed)
    for _ in range(n):
        yield udp(public_address(rng), VICTIM_UDP, rng.randrange(1024, 65536),
                  rng.randrange(1, 65536), rng.randbytes(32))


def segment_size(cap: int) -> int:
    """Full-size segments, but at least 16 of them per direction for a small cap."""
    return max(64, min(SEGMENT, cap // 16))


def segment_flood(connections: int, cap: int, seed: int = 3) -> Iterator[bytes]:
    """``connections`` TCP connections, each trying to make reassembly hold ``cap`` bytes.

    Sent round-robin (step k of every connection, then step k + 1), so every
    connection is open and growing at once: the worst case for the bound,
    which then has no stalled connection to prefer.
    """
    rng = random.Random(seed)
    size = segment_size(cap)
    conns = [(public_address(rng), rng.randrange(1024, 65536), rng.getrandbits(32))
             for _ in range(connections)]
    # A ClientHello claiming 64 KB, in a full-size TLS record: a valid start, never finished.
    hello = b"\x16\x03\x01\x40\x00" + b"\x01\x00\xff\xfb\x03\x03"
    first = hello + bytes(size - len(hello))
    # Out of order: offsets 2, 3, 4 ... segments in, so the gap at 1 never fills.
    held = list(range(2 * size, cap - size + 1, size))
    steps: list[tuple[str, int]] = [("syn", 0), ("data", 0)]
    for i, off in enumerate(held):
        steps.append(("data", off))
        if i % 8 == 7:   # retransmit over what was just sent, with other bytes (first wins)
            steps.append(("overlap", off - size // 2))
    steps += [("data", cap + 10 * size), ("data", -20 * size)]  # past the window, and before
    filler = bytes(range(256)) * (size // 256 + 1)
    for what, off in steps:
        for src, sport, isn in conns:
            if what == "syn":
                yield tcp(src, VICTIM_TCP, sport, 443, isn, SYN)
            elif what == "data":
                yield tcp(src, VICTIM_TCP, sport, 443, isn + 1 + off, ACK | PSH,
                          first if off == 0 else filler[:size])
            else:
                yield tcp(src, VICTIM_TCP, sport, 443, isn + 1 + off, ACK | PSH, b"\xee" * size)


def segment_flood_frames(connections: int, cap: int) -> int:
    """How many frames :func:`segment_flood` yields."""
    size = segment_size(cap)
    held = len(range(2 * size, cap - size + 1, size))
    return connections * (2 + held + held // 8 + 2)


def dns_answer(ident: int, name: str, addrs: Iterable[bytes], ttl: int = 3600) -> bytes:
    """A DNS response: one question, one A record per address (the name compressed)."""
    addrs = list(addrs)
    qname = b"".join(bytes((len(p),)) + p.encode() for p in name.split(".")) + b"\0"
    out = struct.pack("!HHHHHH", ident & 0xFFFF, 0x8180, 1, len(addrs), 0, 0) + qname
    out += struct.pack("!HH", 1, 1)
    for addr in addrs:
        out += struct.pack("!HHHIH", 0xC00C, 1, 1, ttl, 4) + addr
    return out


def dns_fill(answers: int, seed: int = 4) -> Iterator[bytes]:
    """Answers for unique names, each with ``ADDRS_PER_ANSWER`` unique addresses."""
    rng = random.Random(seed)
    base = 0x64400000  # 100.64.0.0/10 (shared space: never a real server, never the sample's)
    for i in range(answers):
        addrs = ((base + (i * ADDRS_PER_ANSWER + j) % (1 << 22)).to_bytes(4, "big")
                 for j in range(ADDRS_PER_ANSWER))
        name = f"h{i}-{rng.getrandbits(32):08x}.flood.example"
        yield udp(RESOLVER, DNS_CLIENT, 53, 1024 + i % 64000, dns_answer(i, name, addrs))


def attack(name: str, scale: int, cap: int = 65536, seed: int = 0) -> tuple[int, Iterator[bytes]]:
    """(frames, frame iterator) of one attack at ``scale`` (packets; connections for segments;
    answers for dns)."""
    if name == "syn":
        return scale, syn_flood(scale, seed + 1)
    if name == "udp":
        return scale, udp_flood(scale, seed + 2)
    if name == "segments":
        return segment_flood_frames(scale, cap), segment_flood(scale, cap, seed + 3)
    if name == "dns":
        return scale, dns_fill(scale, seed + 4)
    raise ValueError(f"unknown attack {name!r}")


# -- timelines ---------------------------------------------------------------------------------

def timeline(frames: Iterable[bytes], count: int, t0: float, seconds: float) -> Iterator[Frame]:
    """``count`` frames spread evenly over ``seconds`` of packet time from ``t0``."""
    step = seconds / max(count, 1)
    for i, frame in enumerate(frames):
        yield t0 + i * step, 1, frame, len(frame)


def mix(*streams: Iterable[Frame]) -> Iterator[Frame]:
    """Merge time-ordered streams into one, by packet time (stable for equal times)."""
    return heapq.merge(*streams, key=lambda f: f[0])


def round_robin(streams: list[tuple[int, Iterator[bytes]]]) -> tuple[int, Iterator[bytes]]:
    """Several attacks at once, interleaved in proportion to their sizes."""
    total = sum(n for n, _ in streams)

    def gen() -> Iterator[bytes]:
        # each stream's k-th frame is due at (k + 0.5) / n of the way through
        heads = [(0.5 / n, s) for s, (n, _) in enumerate(streams) if n]
        sent = [0] * len(streams)
        heapq.heapify(heads)
        while heads:
            _, s = heapq.heappop(heads)
            n, it = streams[s]
            frame = next(it, None)
            if frame is None:
                continue
            yield frame
            sent[s] += 1
            heapq.heappush(heads, ((sent[s] + 0.5) / n, s))

    return total, gen()
