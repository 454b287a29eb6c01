"""The flow table: client roles, direction, counters, timeouts, eviction and fragments.

Packets are real Ethernet frames built here and decoded by ``decode.py``, so
these tests drive the same path as a replay.
"""

from __future__ import annotations

import socket
import struct

import pytest

from residency_monitor.engine import Engine, EngineConfig
from residency_monitor.flows import FlowConfig
from residency_monitor.records import FlowRecord

CLIENT, SERVER, CLIENT6, SERVER6 = "10.0.0.5", "203.0.113.7", "fd00::5", "2001:db8::7"
S, A, F, R, P = 0x02, 0x10, 0x01, 0x04, 0x08
SYN, ACK, PSH = S, A, P


def _ip4(src: str, dst: str, proto: int, l4: bytes, ident: int = 1, frag: int = 0) -> bytes:
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), ident, frag, 64, proto, 0,
                      socket.inet_aton(src), socket.inet_aton(dst))
    return hdr + l4


def _ip6(src: str, dst: str, proto: int, l4: bytes) -> bytes:
    return struct.pack("!IHBB16s16s", 0x60000000, len(l4), proto, 64,
                       socket.inet_pton(socket.AF_INET6, src),
                       socket.inet_pton(socket.AF_INET6, dst)) + l4


def _eth(ip: bytes, vlan: int | None = None) -> bytes:
    et = b"\x86\xdd" if ip[0] >> 4 == 6 else b"\x08\x00"
    tag = struct.pack("!HH", 0x8100, vlan) if vlan is not None else b""
    return b"\x02" * 6 + b"\x04" * 6 + tag + et + ip


def tcp(src, sport, dst, dport, flags, seq=1000, payload=b"", vlan=None) -> bytes:
    seg = struct.pack("!HHIIBBHHH", sport, dport, seq, 0, 0x50, flags, 65535, 0, 0) + payload
    ip = _ip6(src, dst, 6, seg) if ":" in src else _ip4(src, dst, 6, seg)
    return _eth(ip, vlan)


def udp(src, sport, dst, dport, payload=b"x" * 20) -> bytes:
    dgram = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    ip = _ip6(src, dst, 17, dgram) if ":" in src else _ip4(src, dst, 17, dgram)
    return _eth(ip)


def icmp_echo(src, dst, typ, ident) -> bytes:
    return _eth(_ip4(src, dst, 1, struct.pack("!BBHHH", typ, 0, 0, ident, 1) + b"p" * 56))


class Run:
    """An engine with its records collected."""

    def __init__(self, **flow_cfg):
        self.records: list[FlowRecord] = []
        self.engine = Engine(EngineConfig(flows=FlowConfig(**flow_cfg)), self.records.append)

    def feed(self, *packets: tuple[float, bytes]) -> Run:
        for ts, frame in packets:
            self.engine.frame(ts, 1, frame)
        return self

    def finish(self) -> list[FlowRecord]:
        self.engine.finish()
        return self.records


def _handshake(t0=0.0, cport=40000, sport=443, c=CLIENT, s=SERVER):
    return [(t0, tcp(c, cport, s, sport, S)), (t0 + 0.01, tcp(s, sport, c, cport, S | A)),
            (t0 + 0.02, tcp(c, cport, s, sport, A))]


def test_syn_sender_is_client_and_counts_are_per_direction():
    pkts = _handshake() + [(0.03, tcp(CLIENT, 40000, SERVER, 443, A | P, payload=b"a" * 100)),
                           (0.04, tcp(SERVER, 443, CLIENT, 40000, A | P, payload=b"b" * 300))]
    (rec,) = Run().feed(*pkts).finish()
    assert (rec.client_ip, rec.client_port, rec.server_ip, rec.server_port) == (
        CLIENT, 40000, SERVER, 443)
    assert (rec.packets_out, rec.packets_in) == (3, 2)
    assert (rec.bytes_out, rec.bytes_in) == (3 * 40 + 100, 2 * 40 + 300)  # IP-layer bytes
    assert rec.client_from == "tcp_syn" and rec.direction == "outbound"
    assert rec.tcp_flags_out == "SPA" and rec.tcp_flags_in == "SPA"
    assert (rec.ts_start, rec.ts_end) == (0.0, 0.04)


def test_syn_ack_first_makes_its_receiver_the_client():
    (rec,) = Run().feed((0.0, tcp(SERVER, 443, CLIENT, 40000, S | A))).finish()
    assert (rec.client_ip, rec.server_port, rec.client_from) == (CLIENT, 443, "tcp_syn")


@pytest.mark.parametrize("first_sender, ports, client", [
    ("a", (51000, 443), "a"),      # ephemeral -> well-known: sender is the client
    ("a", (443, 51000), "b"),      # mid-flow capture caught the server first
    ("a", (8080, 51000), "b"),     # registered beats ephemeral
    ("a", (123, 123), "a"),        # tie: the first sender is the client
])
def test_port_heuristic_without_syn(first_sender, ports, client):
    a, b = "10.0.0.9", "198.51.100.3"
    (rec,) = Run().feed((0.0, udp(a, ports[0], b, ports[1]))).finish()
    assert rec.client_ip == (a if client == "a" else b)
    assert rec.client_from in ("port_heuristic", "first_packet")


@pytest.mark.parametrize("c, s, expected", [
    ("10.1.2.3", "8.8.8.8", "outbound"), ("8.8.8.8", "10.1.2.3", "inbound"),
    ("10.1.2.3", "192.168.1.1", "internal"), ("8.8.8.8", "1.1.1.1", "external"),
    ("100.64.0.9", "8.8.8.8", "outbound"), ("fd00::1", "2001:db8::1", "outbound"),
    ("fe80::1", "ff02::1", "outbound"), ("169.254.1.1", "8.8.4.4", "outbound"),
])
def test_direction_from_default_internal_networks(c, s, expected):
    (rec,) = Run().feed((0.0, udp(c, 50000, s, 53))).finish()
    assert rec.direction == expected


def test_configured_internal_networks():
    recs: list[FlowRecord] = []
    eng = Engine(EngineConfig(internal_networks=("203.0.113.0/24",)), recs.append)
    eng.frame(0.0, 1, udp("203.0.113.9", 50000, "10.0.0.1", 53))
    eng.finish()
    assert recs[0].direction == "outbound"


def test_vlan_outer_tag_is_kept():
    (rec,) = Run().feed((0.0, tcp(CLIENT, 1, SERVER, 443, S, vlan=30))).finish()
    assert rec.vlan == 30


def test_fin_both_ways_ends_after_the_closing_timeout():
    run = Run(tcp_closed=30)
    run.feed(*_handshake(), (1.0, tcp(CLIENT, 40000, SERVER, 443, F | A)),
             (1.1, tcp(SERVER, 443, CLIENT, 40000, F | A)))
    run.feed((20.0, udp("10.9.9.9", 5000, "8.8.8.8", 53)))
    assert run.records == []                      # still within the 30 s grace
    run.feed((40.0, udp("10.9.9.9", 5001, "8.8.8.8", 53)))
    (rec,) = run.records
    assert rec.end_reason == "fin" and rec.final and rec.ts_end == 1.1


def test_rst_ends_with_reason_rst_even_at_end_of_capture():
    recs = Run().feed(*_handshake(), (0.5, tcp(SERVER, 443, CLIENT, 40000, R))).finish()
    assert [r.end_reason for r in recs] == ["rst"]


def test_idle_timeouts_per_transport_use_packet_time():
    run = Run(tcp_idle=300, udp_idle=60)
    run.feed(*_handshake(), (0.0, udp(CLIENT, 5353, SERVER, 53)))
    run.feed((59.0, udp("10.9.9.9", 5000, "8.8.8.8", 53)))
    assert run.records == []
    run.feed((70.0, udp("10.9.9.9", 5001, "8.8.8.8", 53)))
    assert [(r.transport, r.end_reason) for r in run.records] == [("udp", "idle")]
    run.feed((301.0, udp("10.9.9.9", 5002, "8.8.8.8", 53)))
    assert ("tcp", "idle") in [(r.transport, r.end_reason) for r in run.records]


def test_active_timeout_emits_cumulative_interim_records():
    run = Run(active=100, tcp_idle=1000)
    t = 0.0
    run.feed(*_handshake())
    while t < 250:
        t += 10
        run.feed((t, tcp(CLIENT, 40000, SERVER, 443, A, payload=b"z" * 10)))
    recs = run.finish()
    interim = [r for r in recs if not r.final]
    final = [r for r in recs if r.final]
    assert [r.end_reason for r in interim] == ["active_timeout", "active_timeout"]
    assert len(final) == 1 and final[0].packets_out == 2 + 25  # SYN, ACK and 25 segments
    assert interim[0].packets_out < interim[1].packets_out < final[0].packets_out


def test_end_of_capture_flushes_open_flows():
    recs = Run().feed(*_handshake()).finish()
    assert [(r.end_reason, r.final) for r in recs] == [("end_of_capture", True)]


def test_port_reuse_after_close_starts_a_new_flow():
    run = Run()
    run.feed(*_handshake(), (1.0, tcp(CLIENT, 40000, SERVER, 443, R)))
    run.feed(*_handshake(t0=2.0))
    recs = run.finish()
    assert [r.end_reason for r in recs] == ["port_reuse", "end_of_capture"]
    assert recs[0].packets_out == 3 and recs[1].packets_out == 2


def test_max_flows_evicts_the_longest_idle():
    run = Run(max_flows=100, udp_idle=1000)
    for i in range(100):
        run.feed((float(i), udp(CLIENT, 10000 + i, SERVER, 53)))
    run.feed((50.5, udp(CLIENT, 10000, SERVER, 53)))   # flow 0 is active again
    run.feed((101.0, udp(CLIENT, 20000, SERVER, 53)))  # table full: evict
    evicted = [r for r in run.records if r.end_reason == "evicted"]
    assert [r.client_port for r in evicted] == [10001]  # the longest idle, not the oldest
    assert run.engine.table.stats["flows_evicted"] == 1
    assert run.engine.table.count == 100


def test_eviction_bounds_the_table_under_a_syn_flood():
    run = Run(max_flows=1000)
    for i in range(5000):
        src = "198.18.%d.%d" % (i >> 8, i & 255)
        run.feed((i * 0.001, tcp(src, 1024 + i, "10.0.0.1", 80, S)))
    assert run.engine.table.count <= 1000
    assert run.engine.table.stats["flows_evicted"] >= 4000


def test_icmp_echo_pairs_into_one_flow_by_identifier():
    recs = Run().feed((0.0, icmp_echo(CLIENT, "8.8.8.8", 8, 77)),
                      (0.1, icmp_echo("8.8.8.8", CLIENT, 0, 77)),
                      (1.0, icmp_echo(CLIENT, "8.8.8.8", 8, 78))).finish()
    by_id = {r.icmp_id: r for r in recs}
    assert set(by_id) == {77, 78}
    assert (by_id[77].packets_out, by_id[77].packets_in) == (1, 1)
    assert by_id[77].client_ip == CLIENT and by_id[77].transport == "icmp"


def test_ipv4_fragments_are_accounted_to_their_flow():
    payload = b"q" * 64
    first_l4 = struct.pack("!HHHH", 5000, 53, 8 + len(payload) * 2, 0) + payload
    first = _eth(_ip4(CLIENT, SERVER, 17, first_l4, ident=99, frag=0x2000))
    # the later fragment's bytes look like a UDP header to port 443: they must not be read as one
    later = _eth(_ip4(CLIENT, SERVER, 17, struct.pack("!HH", 7777, 443) + payload[4:],
                      ident=99, frag=(8 + 64) // 8))
    run = Run().feed((0.0, first), (0.001, later))
    recs = run.finish()
    assert len(recs) == 1 and recs[0].server_port == 53
    assert recs[0].packets_out == 2 and recs[0].bytes_out == 20 + 72 + 20 + 64
    assert run.engine.table.stats["fragments"] == 2
    assert run.engine.table.stats["orphan_fragments"] == 0


def test_orphan_fragment_is_counted_not_tracked():
    later = _eth(_ip4(CLIENT, SERVER, 17, b"x" * 40, ident=5, frag=10))
    run = Run().feed((0.0, later))
    assert run.finish() == [] and run.engine.table.stats["orphan_fragments"] == 1


# -- fragmented UDP datagrams: put back together for the inspectors -------------------

def _dns_answer(name: bytes, addrs: list[str]) -> bytes:
    """A DNS response for ``name`` (A) with one A record per address."""
    qname = b"".join(bytes((len(x),)) + x for x in name.split(b".")) + b"\0"
    msg = struct.pack("!HHHHHH", 7, 0x8180, 1, len(addrs), 0, 0) + qname + b"\0\x01\0\x01"
    for a in addrs:
        msg += b"\xc0\x0c\0\x01\0\x01" + struct.pack("!IH", 600, 4) + socket.inet_aton(a)
    return msg


ADDRS = [f"198.51.{i // 250}.{i % 250 + 1}" for i in range(200)]   # 3.2 kB of answers


def _fragments(src: str, dst: str, sport: int, dport: int, payload: bytes, ident: int,
               size: int = 1480) -> list[bytes]:
    """The IPv4 fragments (``size`` data bytes each, a multiple of 8) of one UDP datagram."""
    dgram = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    out = []
    for off in range(0, len(dgram), size):
        more = 0x2000 if off + size < len(dgram) else 0
        out.append(_eth(_ip4(src, dst, 17, dgram[off:off + size], ident=ident,
                             frag=more | off // 8)))
    return out


def _fragments6(src: str, dst: str, sport: int, dport: int, payload: bytes, ident: int,
                size: int = 1232) -> list[bytes]:
    dgram = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    out = []
    for off in range(0, len(dgram), size):
        more = 1 if off + size < len(dgram) else 0
        fh = struct.pack("!BBHI", 17, 0, off | more, ident)
        out.append(_eth(_ip6(src, dst, 44, fh + dgram[off:off + size])))
    return out


def _learnt(run: Run, client: str, addr: str) -> tuple[str, ...]:
    names = run.engine.inspection.names   # type: ignore[union-attr]

    def packed(a: str) -> bytes:
        return socket.inet_pton(socket.AF_INET6 if ":" in a else socket.AF_INET, a)
    return names.names_for(packed(client), packed(addr), 1.0, fallback=False)


@pytest.mark.parametrize("order", [(0, 1, 2), (0, 2, 1)], ids=["in-order", "reordered"])
def test_dns_answer_in_ipv4_fragments_is_read_whole(order):
    query = udp(CLIENT, 5353, SERVER, 53, _dns_answer(b"big.example", [])[:12] + b"\0" * 17)
    frags = _fragments(SERVER, CLIENT, 53, 5353, _dns_answer(b"big.example", ADDRS), 31)
    assert len(frags) == 3
    run = Run().feed((0.0, query), *[(0.01 + i / 1000, frags[i]) for i in order])
    assert _learnt(run, CLIENT, ADDRS[0]) == ("big.example",)
    assert _learnt(run, CLIENT, ADDRS[-1]) == ("big.example",)   # from the last fragment
    stats = run.engine.table.stats
    assert (stats["datagrams_reassembled"], stats["datagrams_dropped"]) == (1, 0)
    assert run.engine.table.reassembly_bytes == 0
    assert "dns" not in run.engine.inspect_errors
    (rec,) = run.finish()
    assert rec.app == "dns" and rec.packets_in == 3   # every fragment still counted


def test_dns_answer_in_ipv6_fragments_is_read_whole():
    frags = _fragments6(SERVER6, CLIENT6, 53, 5353, _dns_answer(b"six.example", ADDRS), 77)
    run = Run().feed(*[(0.01 * i, f) for i, f in enumerate(frags)])
    assert _learnt(run, CLIENT6, ADDRS[100]) == ("six.example",)
    assert run.engine.table.stats["datagrams_reassembled"] == 1


def test_overlapping_fragment_drops_the_datagram():
    frags = _fragments(SERVER, CLIENT, 53, 5353, _dns_answer(b"big.example", ADDRS), 32)
    # a second copy of the middle fragment's data, shifted by 8 bytes: overlaps both neighbours
    ip = frags[1][14:]
    shifted = _eth(_ip4(SERVER, CLIENT, 17, ip[20:], ident=32, frag=0x2000 | (1480 - 8) // 8))
    run = Run().feed((0.0, frags[0]), (0.01, shifted), (0.02, frags[1]), (0.03, frags[2]))
    assert _learnt(run, CLIENT, ADDRS[0]) == ()
    assert run.engine.table.stats["datagrams_dropped"] == 1
    assert run.engine.table.stats["datagrams_reassembled"] == 0
    assert run.engine.table.reassembly_bytes == 0


def test_missing_fragment_is_given_up_after_the_timeout():
    frags = _fragments(SERVER, CLIENT, 53, 5353, _dns_answer(b"big.example", ADDRS), 33)
    run = Run(fragment_timeout=30.0).feed((0.0, frags[0]), (0.01, frags[2]))
    assert run.engine.table.reassembly_bytes > 0
    run.feed((40.0, udp("10.0.0.8", 999, SERVER, 53)))       # packet time passes: a sweep
    assert run.engine.table.reassembly_bytes == 0
    assert run.engine.table.stats["datagrams_dropped"] == 1
    assert _learnt(run, CLIENT, ADDRS[0]) == ()


def test_reassembly_bytes_are_bounded_oldest_given_up_first():
    answer = _dns_answer(b"big.example", ADDRS)
    run = Run(max_reassembly_bytes=4000)
    for ident in range(5):   # five datagrams, each missing its last fragment
        run.feed((ident / 100, _fragments(SERVER, CLIENT, 53, 5353 + ident, answer, ident)[0]))
        assert run.engine.table.reassembly_bytes <= 4000
    assert run.engine.table.stats["datagrams_dropped"] == 3   # 1,452 bytes each: two fit
    # the newest ones are still there and complete when their fragments come
    for frag in _fragments(SERVER, CLIENT, 53, 5357, answer, 4)[1:]:
        run.feed((1.0, frag))
    assert run.engine.table.stats["datagrams_reassembled"] == 1


def test_ipv6_flow():
    pkts = [(0.0, tcp(CLIENT6, 40000, SERVER6, 443, S)),
            (0.1, tcp(SERVER6, 443, CLIENT6, 40000, S | A))]
    (rec,) = Run().feed(*pkts).finish()
    assert (rec.client_ip, rec.server_ip, rec.ip_version) == (CLIENT6, SERVER6, 6)
    assert rec.bytes_out == 60 and rec.direction == "outbound"


def test_malformed_frames_are_counted_not_raised():
    run = Run()
    bad = tcp(CLIENT, 1, SERVER, 2, S)[:20]        # cut inside the IPv4 header
    run.feed((0.0, bad), (0.1, b"\x00" * 5), (0.2, tcp(CLIENT, 1, SERVER, 2, S)))
    recs = run.finish()
    assert len(recs) == 1 and sum(run.engine.bad.values()) == 2
    assert run.engine.first_issue["truncated"].frame_number == 1


def test_sweep_is_driven_by_packet_time_only():
    """advance() lets time pass on an idle live link; nothing ever reads the wall clock."""
    run = Run(udp_idle=60)
    run.feed((1000.0, udp(CLIENT, 5000, SERVER, 53)))
    run.engine.advance(1030.0)
    assert run.records == []
    run.engine.advance(1061.0)
    assert [r.end_reason for r in run.records] == ["idle"]


def test_finish_with_a_deadline_writes_answered_flows_first_and_counts_the_rest():
    """A stop under a flood: records a thousand at a time, answered flows first, until the
    daemon's deadline; the unanswered rest is dropped and counted, not left to systemd's kill."""
    run = Run()
    for i in range(1500):    # a SYN flood: unanswered
        run.feed((0.0, tcp(f"198.51.{i // 250}.{i % 250 + 1}", 1024 + i, CLIENT, 80, S)))
    for i in range(1000):    # conversations: both sides spoke
        run.feed(*_handshake(t0=1.0, cport=20000 + i))
    steps: list[int] = []

    def give_up() -> bool:
        steps.append(len(run.records))
        return True          # the deadline has passed after the first step
    dropped = run.engine.finish(give_up=give_up)
    assert steps == [1000] and dropped == 1500
    assert len(run.records) == 1000 and all(r.packets_in for r in run.records)
    assert run.engine.table.count == 0 and run.engine.table.stats["flows_unflushed"] == 1500


def test_finish_without_a_deadline_writes_every_flow():
    run = Run()
    for i in range(1500):
        run.feed((0.0, tcp(f"198.51.{i // 250}.{i % 250 + 1}", 1024 + i, CLIENT, 80, S)))
    assert run.engine.finish(give_up=lambda: False) == 0
    assert len(run.records) == 1500
