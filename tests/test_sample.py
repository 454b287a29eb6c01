"""The packaged sample capture, checked with dpkt rather than with our own decoders.

The sample is the project's demo and a golden input for other tests, so it has to be
what it claims: the committed file equals its generator's output, every checksum and
length is right, TCP sequence numbers add up, and each flow's packets, bytes, SNI, TLS
version, VLAN tag and country match ``EXPECTED``. dpkt and iptocc are the independent
witnesses; only ``EXPECTED`` and the file come from ``residency_monitor.sample``.
"""

from __future__ import annotations

import io
import ipaddress
import struct
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import dpkt
import iptocc
import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from residency_monitor import sample
from residency_monitor.sample import EXPECTED, SAMPLE_PATH

START = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc).timestamp()
FLOWS = {flow["name"]: flow for flow in EXPECTED}


@dataclass(frozen=True)
class Packet:
    """One captured frame, decoded by dpkt, with the raw bytes checksums are verified on."""

    ts: float
    frame: bytes
    vlan: int | None
    ip: dpkt.ip.IP | dpkt.ip6.IP6
    ip_raw: bytes  # exactly the IP packet, Ethernet padding removed
    l4_raw: bytes
    src: str
    dst: str

    @property
    def proto(self) -> int:
        return self.ip.p if isinstance(self.ip, dpkt.ip.IP) else self.ip.nxt

    @property
    def ip_len(self) -> int:
        return len(self.ip_raw)


def _decode(ts: float, frame: bytes) -> Packet:
    eth = dpkt.ethernet.Ethernet(frame)
    tags = getattr(eth, "vlan_tags", [])
    offset = 14 + 4 * len(tags)
    ip = eth.data
    if isinstance(ip, dpkt.ip.IP):
        ip_raw = frame[offset:offset + ip.len]
        l4_raw = ip_raw[ip.hl * 4:]
    else:
        assert isinstance(ip, dpkt.ip6.IP6), f"unexpected payload {type(ip)}"
        ip_raw = frame[offset:offset + 40 + ip.plen]
        l4_raw = ip_raw[40:]
    return Packet(
        ts, frame, tags[0].id if tags else None, ip, ip_raw, l4_raw,
        ipaddress.ip_address(ip.src).compressed, ipaddress.ip_address(ip.dst).compressed,
    )


@pytest.fixture(scope="module")
def raw() -> bytes:
    return SAMPLE_PATH.read_bytes()


@pytest.fixture(scope="module")
def packets(raw: bytes) -> list[Packet]:
    reader = dpkt.pcap.Reader(io.BytesIO(raw))
    return [_decode(ts, bytes(buf)) for ts, buf in reader]


def _flow_index() -> dict[tuple, tuple[str, bool]]:
    """(proto, src, sport, dst, dport) -> (flow name, is the client's direction)."""
    protos = {"tcp": 6, "udp": 17, "icmp": 1}
    index: dict[tuple, tuple[str, bool]] = {}
    for f in EXPECTED:
        p = protos[f["transport"]]
        index[(p, f["client_ip"], f["client_port"], f["server_ip"], f["server_port"])] = (
            f["name"], True)
        index[(p, f["server_ip"], f["server_port"], f["client_ip"], f["client_port"])] = (
            f["name"], False)
    return index


def _key(pkt: Packet) -> tuple:
    if pkt.proto in (6, 17):
        sport, dport = struct.unpack("!HH", pkt.l4_raw[:4])
        return (pkt.proto, pkt.src, sport, pkt.dst, dport)
    return (pkt.proto, pkt.src, None, pkt.dst, None)


@pytest.fixture(scope="module")
def by_flow(packets: list[Packet]) -> dict[str, list[tuple[bool, Packet]]]:
    index = _flow_index()
    flows: dict[str, list[tuple[bool, Packet]]] = defaultdict(list)
    for pkt in packets:
        name, outbound = index[_key(pkt)]  # KeyError: a packet that belongs to no flow
        flows[name].append((outbound, pkt))
    return flows


def _tcp_segments(flow: list[tuple[bool, Packet]]) -> list[tuple[bool, dpkt.tcp.TCP]]:
    return [(out, dpkt.tcp.TCP(p.l4_raw)) for out, p in flow]


def _stream(flow: list[tuple[bool, Packet]], outbound: bool) -> bytes:
    """The bytes one side sent, reassembled in sequence order (the sample has no loss)."""
    segments = sorted(
        (seg.seq, bytes(seg.data)) for out, seg in _tcp_segments(flow) if out == outbound
        and seg.data
    )
    data = b"".join(payload for _, payload in segments)
    first = segments[0][0]
    assert segments[-1][0] - first + len(segments[-1][1]) == len(data), "gap in the stream"
    return data


def _records(stream: bytes) -> list[dpkt.ssl.TLSRecord]:
    records, used = dpkt.ssl.tls_multi_factory(stream)
    assert used == len(stream), "the TLS records must tile the stream exactly"
    return records


def _extensions(hello: dpkt.Packet) -> dict[int, bytes]:
    return dict(getattr(hello, "extensions", []))


def _sni(client_hello: dpkt.ssl.TLSClientHello) -> str:
    data = _extensions(client_hello)[0]
    assert data[2] == 0  # host_name
    (length,) = struct.unpack("!H", data[3:5])
    return data[5:5 + length].decode()


def _negotiated(server_hello: dpkt.ssl.TLSServerHello) -> str:
    chosen = _extensions(server_hello).get(43)
    version = struct.unpack("!H", chosen)[0] if chosen else server_hello.version
    return {0x0301: "TLS 1.0", 0x0302: "TLS 1.1", 0x0303: "TLS 1.2", 0x0304: "TLS 1.3"}[version]


def _hellos(flow: list[tuple[bool, Packet]]) -> tuple[dpkt.Packet, dpkt.Packet]:
    client = _records(_stream(flow, True))[0]
    server = _records(_stream(flow, False))[0]
    assert client.type == server.type == 22
    ch = dpkt.ssl.TLSHandshake(client.data)
    sh = dpkt.ssl.TLSHandshake(server.data)
    assert (ch.type, sh.type) == (1, 2)
    return ch.data, sh.data


# --- the file ---------------------------------------------------------------------------


def test_committed_file_is_exactly_what_the_generator_writes(raw: bytes, tmp_path: Path) -> None:
    out = tmp_path / "sample.pcap"
    assert sample.main(["--out", str(out)]) == 0
    assert out.read_bytes() == raw
    again = tmp_path / "again.pcap"
    sample.write_pcap(again, sample.build_sample())
    assert again.read_bytes() == raw


def test_file_is_classic_microsecond_ethernet_pcap(raw: bytes, packets: list[Packet]) -> None:
    magic, major, minor, _, _, snaplen, linktype = struct.unpack("<IHHiIII", raw[:24])
    assert (magic, major, minor, linktype) == (0xA1B2C3D4, 2, 4, 1)
    assert snaplen >= max(len(p.frame) for p in packets)
    assert len(raw) < 200_000
    assert 200 <= len(packets) <= 600


def test_timestamps_start_at_the_fixed_time_and_span_a_minute_or_two(
        packets: list[Packet]) -> None:
    times = [p.ts for p in packets]
    assert times == sorted(times)
    assert START <= times[0] < START + 5
    assert 60 <= times[-1] - times[0] <= 120


def test_expected_is_what_the_generator_counted() -> None:
    assert sample.sample_flows() == EXPECTED
    assert len(FLOWS) == len(EXPECTED), "flow names must be unique"


# --- IP and transport layers ----------------------------------------------------------


def _pseudo_header(pkt: Packet) -> bytes:
    src, dst = pkt.ip.src, pkt.ip.dst
    if isinstance(pkt.ip, dpkt.ip.IP):
        return src + dst + struct.pack("!BBH", 0, pkt.proto, len(pkt.l4_raw))
    return src + dst + struct.pack("!I3xB", len(pkt.l4_raw), pkt.proto)


def test_every_checksum_and_length_is_valid(packets: list[Packet]) -> None:
    for n, pkt in enumerate(packets, 1):
        if isinstance(pkt.ip, dpkt.ip.IP):
            assert dpkt.in_cksum(pkt.ip_raw[:pkt.ip.hl * 4]) == 0, f"IPv4 header, packet {n}"
        else:
            assert pkt.ip.nxt in (6, 17), f"IPv6 extension headers are not expected, packet {n}"
        if pkt.proto == 1:
            assert dpkt.in_cksum(pkt.l4_raw) == 0, f"ICMP checksum, packet {n}"
            continue
        total = dpkt.in_cksum_add(0, _pseudo_header(pkt))
        assert dpkt.in_cksum_done(dpkt.in_cksum_add(total, pkt.l4_raw)) == 0, f"L4, packet {n}"
        if pkt.proto == 17:
            assert struct.unpack("!H", pkt.l4_raw[4:6])[0] == len(pkt.l4_raw)


def test_ethernet_padding_is_zeros_up_to_the_minimum_frame(packets: list[Packet]) -> None:
    """Short frames from LAN hosts arrive padded; byte counts must ignore the padding."""
    padded = 0
    for pkt in packets:
        header = 14 + (4 if pkt.vlan else 0)
        trailer = pkt.frame[header + pkt.ip_len:]
        if trailer:
            padded += 1
            assert trailer == bytes(len(trailer))
            assert len(pkt.frame) == header + 46
    assert padded >= 10


def test_every_packet_belongs_to_an_expected_flow_with_the_expected_counts(
        by_flow: dict[str, list[tuple[bool, Packet]]]) -> None:
    assert set(by_flow) == set(FLOWS)
    for name, flow in by_flow.items():
        out = [p.ip_len for is_out, p in flow if is_out]
        back = [p.ip_len for is_out, p in flow if not is_out]
        counted = {"packets_out": len(out), "packets_in": len(back),
                   "bytes_out": sum(out), "bytes_in": sum(back)}
        assert counted == {k: FLOWS[name][k] for k in counted}, name


def _tcp_flows() -> list[str]:
    return [f["name"] for f in EXPECTED if f["transport"] == "tcp"]


@pytest.mark.parametrize("name", [n for n in _tcp_flows() if n != "dead-syn"])
def test_tcp_sequence_numbers_are_consistent(
        name: str, by_flow: dict[str, list[tuple[bool, Packet]]]) -> None:
    """Handshake, in-order data, ACKs that only cover sent bytes, and a FIN or RST end."""
    segments = _tcp_segments(by_flow[name])
    (c_out, syn), (s_out, synack), (a_out, ack) = segments[:3]
    assert (c_out, s_out, a_out) == (True, False, True)
    assert syn.flags == dpkt.tcp.TH_SYN
    assert synack.flags == dpkt.tcp.TH_SYN | dpkt.tcp.TH_ACK
    assert synack.ack == syn.seq + 1 and ack.ack == synack.seq + 1
    next_seq = {True: syn.seq + 1, False: synack.seq + 1}
    last_ack = {True: ack.ack, False: synack.ack}
    for out, seg in segments[2:]:
        assert seg.seq == next_seq[out], f"{name}: hole or overlap"
        assert seg.flags & dpkt.tcp.TH_ACK
        assert last_ack[out] <= seg.ack <= next_seq[not out], f"{name}: ACK of unsent data"
        last_ack[out] = seg.ack
        next_seq[out] += len(seg.data) + (1 if seg.flags & dpkt.tcp.TH_FIN else 0)
    fins = {out for out, seg in segments if seg.flags & dpkt.tcp.TH_FIN}
    resets = [seg for _, seg in segments if seg.flags & dpkt.tcp.TH_RST]
    assert fins == {True, False} or (len(resets) == 1 and segments[-1][1].flags & dpkt.tcp.TH_RST)


def test_unanswered_syn_is_retransmitted_with_backoff(
        by_flow: dict[str, list[tuple[bool, Packet]]]) -> None:
    flow = by_flow["dead-syn"]
    assert all(out for out, _ in flow) and len(flow) == 3
    segments = [dpkt.tcp.TCP(p.l4_raw) for _, p in flow]
    assert {s.flags for s in segments} == {dpkt.tcp.TH_SYN}
    assert len({s.seq for s in segments}) == 1
    gaps = [round(b.ts - a.ts, 3) for (_, a), (_, b) in zip(flow, flow[1:], strict=False)]
    assert gaps == [1.0, 2.0]


def test_icmp_echoes_are_answered(by_flow: dict[str, list[tuple[bool, Packet]]]) -> None:
    flow = by_flow["ping"]
    requests = [dpkt.icmp.ICMP(p.l4_raw) for out, p in flow if out]
    replies = [dpkt.icmp.ICMP(p.l4_raw) for out, p in flow if not out]
    assert [r.type for r in requests] == [8] * 4 and [r.type for r in replies] == [0] * 4
    assert [bytes(r.data) for r in requests] == [bytes(r.data) for r in replies]


# --- application layer ----------------------------------------------------------------


@pytest.mark.parametrize("name", [f["name"] for f in EXPECTED if f["app"] == "tls"])
def test_tls_sni_and_negotiated_version(
        name: str, by_flow: dict[str, list[tuple[bool, Packet]]]) -> None:
    client_hello, server_hello = _hellos(by_flow[name])
    assert _sni(client_hello) == FLOWS[name]["sni"]
    assert _negotiated(server_hello) == FLOWS[name]["tls_version"]
    assert server_hello.session_id == client_hello.session_id


def test_legacy_client_offers_only_tls_1_0(
        by_flow: dict[str, list[tuple[bool, Packet]]]) -> None:
    client_hello, server_hello = _hellos(by_flow["de-legacy"])
    assert client_hello.version == server_hello.version == 0x0301
    assert 43 not in _extensions(client_hello)


def test_tls_1_2_server_ignores_the_clients_tls_1_3_offer(
        by_flow: dict[str, list[tuple[bool, Packet]]]) -> None:
    """A monitor that read the version off the ClientHello would say 1.3 here."""
    client_hello, server_hello = _hellos(by_flow["hk-supplier"])
    assert b"\x03\x04" in _extensions(client_hello)[43]
    assert 43 not in _extensions(server_hello) and server_hello.version == 0x0303


@pytest.mark.parametrize("name", ["hk-supplier", "de-legacy"])
def test_pre_1_3_certificates_name_the_server(
        name: str, by_flow: dict[str, list[tuple[bool, Packet]]]) -> None:
    record = _records(_stream(by_flow[name], False))[1]
    certificate = dpkt.ssl.TLSHandshake(record.data)
    assert certificate.type == 11
    leaf = x509.load_der_x509_certificate(certificate.data.certificates[0])
    cn = leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert cn == FLOWS[name]["sni"]
    assert san.get_values_for_type(x509.DNSName) == [FLOWS[name]["sni"]]


def test_post_quantum_hello_is_split_with_the_sni_in_the_second_segment(
        by_flow: dict[str, list[tuple[bool, Packet]]]) -> None:
    flow = by_flow["jp-travel"]
    sni = FLOWS["jp-travel"]["sni"].encode()
    first_two = [bytes(seg.data) for out, seg in _tcp_segments(flow) if out and seg.data][:2]
    client_hello, server_hello = _hellos(flow)
    record_len = 5 + 4 + len(bytes(client_hello))
    assert 1700 <= record_len <= 2000
    assert len(first_two[0]) + len(first_two[1]) == record_len
    assert sni not in first_two[0] and sni in first_two[1]
    extensions = _extensions(client_hello)
    shares = extensions[51][2:]
    groups = []
    while shares:
        group, size = struct.unpack("!HH", shares[:4])
        groups.append((group, size))
        shares = shares[4 + size:]
    assert (0x11EC, 1216) in groups
    assert 0xFE0D in extensions
    grease = {0x0A0A + 0x1010 * i for i in range(16)}
    assert grease & set(extensions)
    assert client_hello.ciphersuites[0].code in grease
    assert struct.unpack("!H", _extensions(server_hello)[51][:2])[0] == 0x11EC


def test_vlan_tag_only_on_the_vlan_20_client(
        by_flow: dict[str, list[tuple[bool, Packet]]]) -> None:
    for name, flow in by_flow.items():
        tags = {p.vlan for _, p in flow}
        assert tags == {FLOWS[name]["vlan"]}, name
    assert FLOWS["mo-vlan"]["vlan"] == 20


def test_plaintext_http_post_carries_the_form(
        by_flow: dict[str, list[tuple[bool, Packet]]]) -> None:
    stream = _stream(by_flow["sg-http"], True)
    get = dpkt.http.Request(stream)
    post = dpkt.http.Request(stream[len(get):])
    assert (get.method, post.method) == ("GET", "POST")
    assert post.headers["host"] == FLOWS["sg-http"]["host"]
    assert post.headers["content-type"] == "application/x-www-form-urlencoded"
    assert b"email=" in post.body and b"phone=" in post.body


def test_smtp_goes_without_starttls(by_flow: dict[str, list[tuple[bool, Packet]]]) -> None:
    client = _stream(by_flow["us-smtp"], True)
    server = _stream(by_flow["us-smtp"], False)
    assert server.startswith(b"220 ") and b"STARTTLS" not in server
    assert client.startswith(b"EHLO ") and b"STARTTLS" not in client
    assert b"\r\nMAIL FROM:<hr@office-mo.example>" in client and b"\r\nDATA\r\n" in client


def _dns_answers(flow: list[tuple[bool, Packet]]) -> tuple[dpkt.dns.DNS, dpkt.dns.DNS]:
    (q_out, query), (r_out, reply) = flow
    assert (q_out, r_out) == (True, False)
    return dpkt.dns.DNS(dpkt.udp.UDP(query.l4_raw).data), dpkt.dns.DNS(
        dpkt.udp.UDP(reply.l4_raw).data)


def test_dns_lookups_precede_and_resolve_their_flows(
        by_flow: dict[str, list[tuple[bool, Packet]]]) -> None:
    """Each named outbound flow follows a lookup whose answer chain ends at its server."""
    resolved: dict[tuple[str, str], tuple[float, set[str]]] = defaultdict(
        lambda: (float("inf"), set()))
    for f in EXPECTED:
        if f["app"] != "dns":
            continue
        query, reply = _dns_answers(by_flow[f["name"]])
        assert query.id == reply.id and query.qd[0].name == f["host"]
        addresses = {ipaddress.ip_address(rr.ip if rr.type == 1 else rr.ip6).compressed
                     for rr in [*reply.an, *reply.ar] if rr.type in (1, 28)}
        when, known = resolved[(f["client_ip"], f["host"])]
        resolved[(f["client_ip"], f["host"])] = (
            min(when, by_flow[f["name"]][0][1].ts), known | addresses)
    for f in EXPECTED:
        if f["app"] in ("tls", "http", "smtp"):
            lookup = f["host"] if f["app"] != "smtp" else f["host"].split(".", 1)[1]
            when, addresses = resolved[(f["client_ip"], lookup)]
            assert f["server_ip"] in addresses, f["name"]
            assert when < by_flow[f["name"]][0][1].ts


# --- geography --------------------------------------------------------------------------


def test_every_server_maps_to_its_stated_country() -> None:
    for f in EXPECTED:
        assert iptocc.country_code(f["server_ip"]) == f["country"], f["name"]


def test_sample_covers_every_destination_the_policy_cares_about() -> None:
    wanted = {
        "mo-bank": ("MO", "TLS 1.3"), "us-crm": ("US", "TLS 1.3"),
        "cn-logistics": ("CN", "TLS 1.3"), "hk-supplier": ("HK", "TLS 1.2"),
        "de-legacy": ("DE", "TLS 1.0"), "jp-travel": ("JP", "TLS 1.3"),
        "sg-http": ("SG", None), "us-smtp": ("US", None), "de-ipv6": ("DE", "TLS 1.3"),
        "mo-vlan": ("MO", "TLS 1.3"), "nas-https": (None, "TLS 1.3"),
    }
    assert {n: (FLOWS[n]["country"], FLOWS[n]["tls_version"]) for n in wanted} == wanted
    assert ipaddress.ip_address(FLOWS["de-ipv6"]["server_ip"]).version == 6
    internal = [f for f in EXPECTED if f["app"] in ("print", "tls") and f["country"] is None]
    assert all(ipaddress.ip_address(f["server_ip"]).is_private for f in internal)
    assert len(internal) == 2
