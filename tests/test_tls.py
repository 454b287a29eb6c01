"""TLS handshake parsing: golden tests over the real captures, and edge cases built by hand.

The golden tests replay every TLS-over-TCP connection of the shared corpus
through ``read_handshake_messages`` and the hello parsers and compare with
the tshark oracle beside each capture. The helpers here (a tiny TCP
reassembler and a hello builder) are reused by the fingerprint and fuzz tests.
"""

from __future__ import annotations

import functools
import hashlib
import socket
import struct
from dataclasses import dataclass
from pathlib import Path

import dpkt
import pytest
from conftest import CORPUS, corpus_files, oracle

from residency_monitor.tls import (
    HRR_RANDOM,
    ClientHello,
    ParseError,
    ServerHello,
    host_name,
    looks_like_tls,
    parse_client_hello,
    parse_server_hello,
    parse_sslv2_client_hello,
    parse_sslv2_server_hello,
    read_handshake_messages,
    split_handshake,
)
from residency_monitor.tls_names import cipher_name, group_name, is_grease, version_name

# ---------------------------------------------------------------------------
# Capture helpers: enough TCP reassembly for tests (no retransmission games).
# ---------------------------------------------------------------------------

FlowKey = tuple[str, int, str, int]  # src ip, src port, dst ip, dst port
# Where the IP header starts for link types that are not Ethernet.
_IP_OFFSET = {0: 4, 108: 4, 101: 0, 12: 0, 14: 0, 113: 16, 276: 20}


def _ip_layer(linktype: int, buf: bytes) -> dpkt.Packet | None:
    if linktype == 1:
        eth = dpkt.ethernet.Ethernet(buf)
        return eth.data if isinstance(eth.data, (dpkt.ip.IP, dpkt.ip6.IP6)) else None
    off = _IP_OFFSET.get(linktype)
    if off is None or len(buf) <= off:
        return None
    version = buf[off] >> 4
    if version == 4:
        return dpkt.ip.IP(buf[off:])
    return dpkt.ip6.IP6(buf[off:]) if version == 6 else None


def _flow_key(ip: dpkt.Packet, tcp: dpkt.tcp.TCP) -> FlowKey:
    fam = socket.AF_INET if isinstance(ip, dpkt.ip.IP) else socket.AF_INET6
    return (socket.inet_ntop(fam, ip.src), tcp.sport, socket.inet_ntop(fam, ip.dst), tcp.dport)


@dataclass
class Direction:
    """One direction of a TCP connection: its segments (stream offset, bytes) and the stream."""

    segments: list[tuple[int, bytes]]
    data: bytes


def _stitch(isn: int | None, segs: list[tuple[int, bytes]]) -> Direction:
    base = isn + 1 if isn is not None else segs[0][0]
    ordered = sorted(((seq - base) % 2**32, d) for seq, d in segs)
    data = bytearray()
    kept = []
    for off, d in ordered:
        if off > len(data):
            break  # a gap: the stream is only good up to here
        if off + len(d) > len(data):
            kept.append((off, d))
            data += d[len(data) - off:]
    return Direction(kept, bytes(data))


@functools.cache
def tcp_directions(path: Path) -> dict[FlowKey, Direction]:
    """Every TCP direction of a capture with payload, reassembled in sequence order."""
    raw: dict[FlowKey, tuple[list[int | None], list[tuple[int, bytes]]]] = {}
    with open(path, "rb") as f:
        reader = dpkt.pcap.UniversalReader(f)
        linktype = reader.datalink()
        for _ts, buf in reader:
            try:
                ip = _ip_layer(linktype, buf)
            except (dpkt.UnpackError, IndexError):
                continue
            if ip is None or not isinstance(ip.data, dpkt.tcp.TCP):
                continue
            isn, segs = raw.setdefault(_flow_key(ip, ip.data), ([None], []))
            if ip.data.flags & dpkt.tcp.TH_SYN:
                isn[0] = ip.data.seq
            if ip.data.data:
                segs.append((ip.data.seq, bytes(ip.data.data)))
    return {k: _stitch(isn[0], segs) for k, (isn, segs) in raw.items() if segs}


def skip_plaintext(data: bytes, msg_type: int) -> bytes:
    """For STARTTLS streams: the bytes from the first record that carries a hello."""
    for i in range(len(data) - 5):
        if data[i] == 22 and data[i + 1] == 3 and data[i + 5] == msg_type:
            return data[i:]
    return data


@dataclass
class Handshake:
    """Both directions of one connection, as the parsers see them."""

    client: bytes
    server: bytes
    client_messages: list[tuple[int, bytes]]
    server_messages: list[tuple[int, bytes]]

    @property
    def client_hellos(self) -> list[ClientHello]:
        return [parse_client_hello(b) for t, b in self.client_messages if t == 1]

    @property
    def server_hellos(self) -> list[ServerHello]:
        return [parse_server_hello(b) for t, b in self.server_messages if t == 2]


def handshake(path: Path, conn: dict) -> Handshake:
    """The handshake of an oracle ``tls_connections`` entry, read from the capture."""
    dirs = tcp_directions(path)
    fwd = (conn["client_ip"], conn["client_port"], conn["server_ip"], conn["server_port"])
    rev = (fwd[2], fwd[3], fwd[0], fwd[1])
    client = dirs[fwd].data if fwd in dirs else b""
    server = dirs[rev].data if rev in dirs else b""
    if conn.get("plaintext_protocols_in_stream"):
        client, server = skip_plaintext(client, 1), skip_plaintext(server, 2)
    cm = read_handshake_messages(client)[0] if client else []
    sm = read_handshake_messages(server)[0] if server else []
    return Handshake(client, server, cm, sm)


def first_tls_handshake(name: str) -> tuple[Path, dict, Handshake]:
    path = CORPUS / name
    conn = next(c for c in oracle(path)["tls_connections"] if c["protocol"] == "tls")
    return path, conn, handshake(path, conn)


def tcp_tls_connections() -> list[tuple[str, int]]:
    """(capture, index) of every TLS-over-TCP connection in the oracle files."""
    out = []
    for path in corpus_files():
        for i, conn in enumerate(oracle(path)["tls_connections"]):
            if conn["protocol"] == "tls":
                out.append((path.name, i))
    return out


def final_server_hello(hellos: list[ServerHello]) -> ServerHello:
    """The oracle's rule: the last non-HRR ServerHello, else the HRR."""
    return ([s for s in hellos if not s.hello_retry_request] or hellos)[-1]


def hx(values: tuple[int, ...]) -> list[str]:
    return [f"0x{v:04x}" for v in values]


# ---------------------------------------------------------------------------
# Hello builder for hand-made cases.
# ---------------------------------------------------------------------------

def v8(b: bytes) -> bytes:
    return bytes([len(b)]) + b


def v16(b: bytes) -> bytes:
    return struct.pack("!H", len(b)) + b


def u16s(*vals: int) -> bytes:
    return b"".join(struct.pack("!H", v) for v in vals)


def ext(etype: int, payload: bytes) -> bytes:
    return struct.pack("!H", etype) + v16(payload)


def sni_ext(name: bytes) -> bytes:
    return ext(0, v16(b"\x00" + v16(name)))


def alpn_ext(*names: bytes) -> bytes:
    return ext(16, v16(b"".join(v8(n) for n in names)))


def versions_ext(*versions: int) -> bytes:
    return ext(43, v8(u16s(*versions)))


def groups_ext(*groups: int) -> bytes:
    return ext(10, v16(u16s(*groups)))


def sigalgs_ext(*algs: int) -> bytes:
    return ext(13, v16(u16s(*algs)))


def key_share_ext(*groups: int) -> bytes:
    return ext(51, v16(b"".join(u16s(g) + v16(b"\x11" * 32) for g in groups)))


def client_hello_body(
    exts: list[bytes] | None = None,
    suites: tuple[int, ...] = (0x1301, 0xC02F),
    version: int = 0x0303,
    cookie: bytes | None = None,
) -> bytes:
    body = struct.pack("!H", version) + bytes(range(32)) + v8(b"\x42" * 32)
    if cookie is not None:
        body += v8(cookie)
    body += v16(u16s(*suites)) + v8(b"\x00")
    if exts is not None:
        body += v16(b"".join(exts))
    return body


def server_hello_body(
    exts: list[bytes] | None = None,
    suite: int = 0x1301,
    version: int = 0x0303,
    random: bytes = bytes(32),
) -> bytes:
    body = struct.pack("!H", version) + random + v8(b"\x42" * 32) + u16s(suite) + b"\x00"
    return body + v16(b"".join(exts)) if exts is not None else body


def message(msg_type: int, body: bytes) -> bytes:
    return bytes([msg_type]) + len(body).to_bytes(3, "big") + body


def record(ctype: int, payload: bytes, version: int = 0x0301) -> bytes:
    return struct.pack("!BHH", ctype, version, len(payload)) + payload


def sample_client_hello() -> bytes:
    """A TLS 1.3 ClientHello body in Chrome's shape (GREASE, PQ share, ECH)."""
    return client_hello_body([
        ext(0x0A0A, b""), sni_ext(b"Example.COM."), alpn_ext(b"h2", b"http/1.1"),
        versions_ext(0x2A2A, 0x0304, 0x0303), groups_ext(0x3A3A, 0x11EC, 0x001D),
        ext(11, v8(b"\x00")), sigalgs_ext(0x0403, 0x0804), key_share_ext(0x3A3A, 0x11EC),
        ext(0xFE0D, b"\x00" * 8), ext(0x1A1A, b"\x00"),
    ], suites=(0x4A4A, 0x1301, 0x1302, 0xC02B))


def sample_server_hello() -> bytes:
    return server_hello_body([ext(43, u16s(0x0304)), ext(51, u16s(0x11EC) + v16(b"\x22" * 32))])


# ---------------------------------------------------------------------------
# Golden tests over the corpus.
# ---------------------------------------------------------------------------

GOLDEN: list = tcp_tls_connections() or [pytest.param("", 0, id="no-corpus")]


@pytest.mark.parametrize(("capture", "index"), GOLDEN)
def test_golden_client_hello_matches_oracle(corpus_dir: Path, capture: str, index: int) -> None:
    conn = oracle(corpus_dir / capture)["tls_connections"][index]
    hs = handshake(corpus_dir / capture, conn)
    chs = hs.client_hellos
    assert bool(chs) == conn["client_hello_seen"]
    if not chs:
        return
    ch = chs[0]
    assert len(chs) == conn["client_hello_count"]
    assert ch.sslv2 == (conn["client_hello_format"] == "sslv2")
    assert f"0x{ch.legacy_version:04x}" == conn["client_legacy_version"]
    assert ch.sni == conn["sni"]
    assert hx(ch.versions) == conn["offered_versions"]
    assert [version_name(v) for v in ch.versions] == conn["offered_versions_names"]
    assert list(ch.alpn) == conn["alpn_offered"]
    if "alpn_first_hex" in conn:
        assert ch.alpn_raw[0].hex() == conn["alpn_first_hex"]
    width = "0x%06x" if ch.sslv2 else "0x%04x"
    assert [width % c for c in ch.cipher_suites] == conn["cipher_suites_offered"]
    assert hx(ch.extensions) == conn["extensions_offered"]
    assert hx(ch.groups) == conn["supported_groups"]
    assert hx(ch.key_share_groups) == conn["key_share_groups"]
    assert hx(ch.signature_algorithms) == conn["signature_algorithms"]
    assert ch.ech == conn["ech_extension_offered"]


@pytest.mark.parametrize(("capture", "index"), GOLDEN)
def test_golden_server_hello_matches_oracle(corpus_dir: Path, capture: str, index: int) -> None:
    conn = oracle(corpus_dir / capture)["tls_connections"][index]
    shs = handshake(corpus_dir / capture, conn).server_hellos
    assert bool(shs) == conn["server_hello_seen"]
    if not shs:
        assert conn["negotiated_version"] is None
        return
    assert len(shs) == conn["server_hello_count"]
    sh = final_server_hello(shs)
    assert any(s.hello_retry_request for s in shs) == conn["hello_retry_request"]
    assert f"0x{sh.version:04x}" == conn["negotiated_version"]
    assert version_name(sh.version) == conn["negotiated_version_name"]
    assert f"0x{sh.legacy_version:04x}" == conn["server_legacy_version"]
    assert (None if sh.sslv2 else f"0x{sh.cipher_suite:04x}") == conn["cipher_suite"]
    assert sh.alpn == conn["alpn_selected"]
    group = None if sh.key_share_group is None else f"0x{sh.key_share_group:04x}"
    assert group == conn["server_key_share_group"]


def test_corpus_has_tls_connections(corpus_dir: Path) -> None:
    # Guard against the golden tests silently covering nothing.
    assert len(tcp_tls_connections()) >= 100


# ---------------------------------------------------------------------------
# Named captures: the hard cases, with their facts spelled out.
# ---------------------------------------------------------------------------

def test_split_client_hello_needs_both_segments(corpus_dir: Path) -> None:
    path, conn, hs = first_tls_handshake("ark-tls-split-client-hello.pcap")
    assert conn["client_hello_tcp_segments"] == 2
    fwd = (conn["client_ip"], conn["client_port"], conn["server_ip"], conn["server_port"])
    segments = tcp_directions(path)[fwd].segments
    first_len = len(segments[0][1])
    assert read_handshake_messages(hs.client[:first_len]) == ([], False)
    ch = hs.client_hellos[0]
    assert ch.sni == "clients2.google.com"
    assert 0x11EC in ch.key_share_groups and ch.ech
    assert len(hs.client_messages[0][1]) > first_len


def test_post_quantum_key_share(corpus_dir: Path) -> None:
    _, conn, hs = first_tls_handshake("zeek-chrome-1250-tls-x25519-kyber.pcap")
    ch = hs.client_hellos[0]
    pq_names = ("X25519Kyber768Draft00", "X25519MLKEM768")
    pq = tuple(g for g in ch.key_share_groups if group_name(g) in pq_names)
    assert pq and hx(pq)[0] in conn["key_share_groups"]
    assert len(hs.client_messages[0][1]) > 1500  # bigger than one Ethernet MTU
    assert is_grease(ch.key_share_groups[0])


def test_hello_retry_request_gives_two_hellos_each_way(corpus_dir: Path) -> None:
    _, _, hs = first_tls_handshake("zeek-hrr.pcap")
    ch1, ch2 = hs.client_hellos
    hrr, sh = hs.server_hellos
    assert hrr.hello_retry_request and not sh.hello_retry_request
    assert ch1.key_share_groups == (0x0015,)
    assert hrr.key_share_group == 0x0017 == ch2.key_share_groups[0]
    assert sh.version == 0x0304 and sh.cipher_suite == 0x1302
    # The dummy ChangeCipherSpec between the two hellos (RFC 8446 D.4) did not stop the walk.
    assert b"\x14\x03\x03\x00\x01\x01" in hs.client


def test_sslv2_hello_and_server_hello(corpus_dir: Path) -> None:
    _, _, hs = first_tls_handshake("zeek-ssl-v2.pcap")
    (ch,) = hs.client_hellos
    (sh,) = hs.server_hellos
    assert ch.sslv2 and ch.versions == (0x0002,) and ch.extensions == ()
    assert 0x0700C0 in ch.cipher_suites  # SSL_CK_DES_192_EDE3_CBC_WITH_MD5
    assert sh.sslv2 and sh.version == 0x0002
    assert version_name(sh.version) == "SSL 2.0"
    assert read_handshake_messages(hs.client)[1] is True


def test_sslv2_hello_offering_tls10(corpus_dir: Path) -> None:
    _, _, hs = first_tls_handshake("sv-sslv2-tls-upgrade-01-ssl-v2-s1.pcap")
    (ch,) = hs.client_hellos
    sh = hs.server_hellos[0]
    assert ch.sslv2 and ch.versions == (0x0301,)
    assert 0x39 in ch.cipher_suites and cipher_name(0x39) == "TLS_DHE_RSA_WITH_AES_256_CBC_SHA"
    assert parse_sslv2_client_hello(hs.client_messages[0][1]) == ch
    assert not sh.sslv2 and sh.version == 0x0301 and sh.cipher_suite == 0x39


def test_tls13_draft_version(corpus_dir: Path) -> None:
    _, _, hs = first_tls_handshake("zeek-tls13draft23-chrome67.0.3368.0-canary.pcap")
    ch, sh = hs.client_hellos[0], hs.server_hellos[0]
    assert ch.versions[0] == 0x7F17 and version_name(0x7F17) == "TLS 1.3 draft 23"
    assert sh.version == 0x7F17 and sh.legacy_version == 0x0303


def test_ech_outer_sni(corpus_dir: Path) -> None:
    path = CORPUS / "zeek-tls13-ech.pcap"
    conns = [c for c in oracle(path)["tls_connections"] if c["client_hello_seen"]]
    hellos = [handshake(path, c).client_hellos[0] for c in conns]
    assert len(hellos) == 2
    for ch in hellos:  # the outer (public) name; the real one is encrypted
        assert ch.ech and ch.sni == "cloudflare-ech.com"


def test_non_ascii_alpn_keeps_raw_bytes(corpus_dir: Path) -> None:
    _, _, hs = first_tls_handshake("ja4-tls-non-ascii-alpn.pcapng")
    ch = hs.client_hellos[0]
    assert ch.alpn_raw[0] == b"\xba\xad"
    assert ch.alpn[0] == "\ufffd\ufffd"


# ---------------------------------------------------------------------------
# Hand-made hellos: what the corpus does not show.
# ---------------------------------------------------------------------------

def test_client_hello_fields_and_normalised_sni() -> None:
    ch = parse_client_hello(sample_client_hello())
    assert ch.sni == "example.com"  # lower-cased, trailing dot stripped
    assert ch.versions == (0x0304, 0x0303)  # GREASE removed
    assert ch.cipher_suites == (0x4A4A, 0x1301, 0x1302, 0xC02B)  # GREASE kept
    assert ch.extensions[0] == 0x0A0A and ch.extensions[-1] == 0x1A1A
    assert ch.groups == (0x3A3A, 0x11EC, 0x001D)
    assert ch.key_share_groups == (0x3A3A, 0x11EC)
    assert ch.signature_algorithms == (0x0403, 0x0804)
    assert ch.ec_point_formats == (0,)
    assert ch.alpn == ("h2", "http/1.1") and ch.alpn_raw == (b"h2", b"http/1.1")
    assert ch.ech and not ch.sslv2


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"www.Example.org", "www.example.org"),
        (b"a.b.", "a.b"),
        (b"_dmarc.example-1.com", "_dmarc.example-1.com"),
        (b"xn--bcher-kva.example", "xn--bcher-kva.example"),
        (b"a" * 63 + b".com", "a" * 63 + ".com"),
        (b"a" * 64 + b".com", None),  # label over 63
        (b"a..b", None),
        (b"", None),
        (b".", None),
        (b"exa mple.com", None),
        (b"example.com\x00evil", None),
        (b"example.com\n", None),  # a trailing newline is not a name (regex end-of-line trap)
        (b"a.b..", None),         # only one trailing dot is the root
        (b"\n", None),
        (b"caf\xc3\xa9.fr", None),
        (b"1.2.3.4", "1.2.3.4"),  # charset-valid; literal IPs are policy's business
    ],
)
def test_host_name_validation(raw: bytes, expected: str | None) -> None:
    assert host_name(raw) == expected


def test_host_name_length_limit() -> None:
    name = b".".join([b"a" * 63] * 4)  # 255 characters
    assert host_name(name) is None
    assert host_name(name[:253]) == name[:253].decode()


def test_invalid_sni_is_none_but_hello_survives() -> None:
    ch = parse_client_hello(client_hello_body([sni_ext(b"bad name!"), alpn_ext(b"h2")]))
    assert ch.sni is None and ch.alpn == ("h2",) and ch.extensions == (0, 16)


def test_first_host_name_wins_and_other_name_types_are_skipped() -> None:
    names = b"\x07" + v16(b"opaque") + b"\x00" + v16(b"first.example") + b"\x00" + v16(b"second")
    ch = parse_client_hello(client_hello_body([ext(0, v16(names))]))
    assert ch.sni == "first.example"


def test_malformed_inner_extension_is_salvaged() -> None:
    odd_groups = ext(10, v16(b"\x00\x1d\x00"))
    ch = parse_client_hello(client_hello_body([odd_groups, sni_ext(b"ok.example")]))
    assert ch.groups == () and ch.sni == "ok.example" and ch.extensions == (10, 0)


def test_duplicate_extension_uses_the_first() -> None:
    ch = parse_client_hello(client_hello_body([alpn_ext(b"h2"), alpn_ext(b"http/1.1")]))
    assert ch.alpn == ("h2",) and ch.extensions == (16, 16)


def test_hello_without_extensions() -> None:
    ch = parse_client_hello(client_hello_body(None, version=0x0300))
    assert ch.extensions == () and ch.versions == (0x0300,) and ch.sni is None


def test_supported_versions_of_only_grease_falls_back_to_legacy() -> None:
    ch = parse_client_hello(client_hello_body([versions_ext(0x7A7A)]))
    assert ch.versions == (0x0303,)


def test_odd_cipher_suite_length_keeps_parsing_in_sync() -> None:
    body = bytearray(client_hello_body([sni_ext(b"sync.example")], suites=(0x1301, 0x1302)))
    # Rewrite the cipher vector as 5 bytes: 13 01 13 02 ff.
    i = 2 + 32 + 33
    body[i:i + 6] = b"\x00\x05\x13\x01\x13\x02" + b"\xff"
    ch = parse_client_hello(bytes(body))
    assert ch.cipher_suites == (0x1301, 0x1302) and ch.sni == "sync.example"


def test_dtls_client_hello_has_a_cookie() -> None:
    body = client_hello_body([sni_ext(b"dtls.example")], version=0xFEFD, cookie=b"\x99" * 20)
    ch = parse_client_hello(body)
    assert ch.legacy_version == 0xFEFD and ch.sni == "dtls.example"


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\x03\x03",
        client_hello_body([sni_ext(b"x.example")])[:-3],  # extension block cut short
        client_hello_body(None) + b"\x00\x09\x00",  # extension block longer than the body
        client_hello_body([b"\x00\x00\x00\x10\x00"]),  # extension longer than its block
    ],
)
def test_malformed_client_hello_raises_parse_error(body: bytes) -> None:
    with pytest.raises(ParseError):
        parse_client_hello(body)


def test_server_hello_tls13() -> None:
    sh = parse_server_hello(sample_server_hello())
    assert sh.version == 0x0304 and sh.legacy_version == 0x0303
    assert sh.key_share_group == 0x11EC and not sh.hello_retry_request
    assert sh.extensions == (43, 51) and sh.alpn is None


def test_server_hello_tls12_with_alpn() -> None:
    sh = parse_server_hello(server_hello_body([alpn_ext(b"h2"), ext(0xFF01, b"\x00")], 0xC02F))
    assert sh.version == 0x0303 and sh.alpn == "h2" and sh.cipher_suite == 0xC02F
    assert sh.key_share_group is None


def test_hello_retry_request_is_recognised_by_its_random() -> None:
    hrr = parse_server_hello(server_hello_body(
        [ext(43, u16s(0x0304)), ext(51, u16s(0x0017))], random=HRR_RANDOM))
    assert hrr.hello_retry_request and hrr.key_share_group == 0x0017


def test_hrr_random_is_sha256_of_its_name() -> None:
    assert hashlib.sha256(b"HelloRetryRequest").digest() == HRR_RANDOM


def test_early_draft_server_hello_has_no_session_id() -> None:
    body = u16s(0x7F12) + bytes(32) + u16s(0x1301) + v16(ext(40, b"\x00\x1d" + v16(b"k")))
    sh = parse_server_hello(body)
    assert sh.version == 0x7F12 and sh.cipher_suite == 0x1301 and sh.extensions == (40,)


def sslv2_client_hello(version: int = 0x0301) -> bytes:
    specs = b"\x01\x00\x80" + b"\x00\x00\x2f"
    body = b"\x01" + u16s(version, len(specs), 0, 16) + specs + b"\x55" * 16
    return bytes([0x80 | len(body) >> 8, len(body) & 0xFF]) + body


def test_sslv2_client_hello_synthetic() -> None:
    rec = sslv2_client_hello()
    ch = parse_sslv2_client_hello(rec)
    assert ch is not None and ch.sslv2 and ch.cipher_suites == (0x010080, 0x2F)
    assert parse_client_hello(rec) == ch  # same entry point as TLS hellos
    assert parse_sslv2_client_hello(rec[:-1]) is None
    assert read_handshake_messages(rec) == ([(1, rec)], True)
    assert read_handshake_messages(rec[:10]) == ([], False)
    assert looks_like_tls(rec)


def test_sslv2_server_hello_synthetic() -> None:
    body = b"\x04\x00\x01" + u16s(0x0002, 3, 3, 16) + b"CRT" + b"\x07\x00\xc0" + b"\x66" * 16
    rec = bytes([0x80, len(body)]) + body
    sh = parse_sslv2_server_hello(rec)
    assert sh is not None and sh.sslv2 and sh.version == 0x0002 and sh.cipher_suite == 0x0700C0
    assert parse_server_hello(rec) == sh
    assert read_handshake_messages(rec) == ([(2, rec)], True)
    with pytest.raises(ParseError):
        parse_sslv2_client_hello(rec)


# ---------------------------------------------------------------------------
# Record layer.
# ---------------------------------------------------------------------------

def test_message_split_over_records_and_records_over_segments() -> None:
    msg = message(1, sample_client_hello())
    stream = record(22, msg[:100]) + record(22, msg[100:150]) + record(22, msg[150:])
    assert read_handshake_messages(stream) == ([(1, sample_client_hello())], False)
    for cut in range(len(stream)):
        msgs, done = read_handshake_messages(stream[:cut])
        assert msgs == [] and not done


def test_several_messages_in_one_record() -> None:
    sh = message(2, sample_server_hello())
    cert, done_msg = message(11, b"\x00\x00\x00"), message(14, b"")
    msgs, done = read_handshake_messages(record(22, sh + cert + done_msg, 0x0303))
    assert [t for t, _ in msgs] == [2, 11, 14] and not done


@pytest.mark.parametrize("ctype", [21, 23])
def test_alert_or_application_data_ends_the_plaintext(ctype: int) -> None:
    stream = record(22, message(2, sample_server_hello())) + record(ctype, b"\x02\x28")
    msgs, done = read_handshake_messages(stream + record(22, message(2, b"ignored")))
    assert [t for t, _ in msgs] == [2] and done


def test_ccs_after_tls12_flight_ends_the_plaintext() -> None:
    flight = message(16, b"\x00" * 5)  # ClientKeyExchange
    stream = record(22, message(1, sample_client_hello()) + flight) + record(20, b"\x01")
    finished = record(22, b"\x01\x00\x00\x30\x03\x03" + b"x" * 48)  # looks like a hello
    msgs, done = read_handshake_messages(stream + finished)
    assert [t for t, _ in msgs] == [1, 16] and done


def test_ccs_then_encrypted_finished_after_resumption() -> None:
    ch = record(22, message(1, sample_client_hello()))
    stream = ch + record(20, b"\x01") + record(22, b"\x8a" * 40)
    msgs, done = read_handshake_messages(stream)
    assert len(msgs) == 1 and done
    # Right after the CCS a second ClientHello may still come (TLS 1.3 HRR): not done yet.
    assert read_handshake_messages(ch + record(20, b"\x01")) == (msgs, False)


def test_middlebox_compat_hrr_flow_server_side() -> None:
    hrr = server_hello_body([ext(43, u16s(0x0304)), ext(51, u16s(0x0017))], random=HRR_RANDOM)
    stream = (record(22, message(2, hrr), 0x0303) + record(20, b"\x01", 0x0303)
              + record(22, message(2, sample_server_hello()), 0x0303) + record(23, b"\x00" * 30))
    msgs, done = read_handshake_messages(stream)
    assert [parse_server_hello(b).hello_retry_request for _, b in msgs] == [True, False] and done


def test_ccs_after_normal_tls13_server_hello_is_done() -> None:
    stream = record(22, message(2, sample_server_hello())) + record(20, b"\x01")
    assert read_handshake_messages(stream)[1] is True


def test_incomplete_trailing_record_is_not_returned_yet() -> None:
    first = record(22, message(1, sample_client_hello()))
    msgs, done = read_handshake_messages(first + b"\x16\x03\x01\x00")
    assert len(msgs) == 1 and not done


@pytest.mark.parametrize(
    "stream",
    [b"GET / HTTP/1.1\r\n", b"SSH-2.0-OpenSSH\r\n", b"\x16\x02\x00\x00\x01\x00",
     b"\x16\x03\x01\xff\xff" + b"\x00" * 10, b"\x80\x05\x09\x00\x02\x00\x00"],
)
def test_not_tls_raises_parse_error(stream: bytes) -> None:
    with pytest.raises(ParseError):
        read_handshake_messages(stream)


def test_split_handshake_for_record_less_streams() -> None:
    # QUIC's CRYPTO stream: handshake messages back to back, no record headers.
    crypto = message(1, sample_client_hello()) + message(8, b"\x00\x00")
    assert split_handshake(crypto) == [(1, sample_client_hello()), (8, b"\x00\x00")]
    assert split_handshake(crypto[:-1]) == [(1, sample_client_hello())]
    assert split_handshake(b"\x01\x00") == []


def test_garbage_after_valid_records_ends_the_walk() -> None:
    stream = record(22, message(1, sample_client_hello())) + b"GARBAGE!"
    msgs, done = read_handshake_messages(stream)
    assert len(msgs) == 1 and done


def test_draft_record_version_is_tolerated() -> None:
    msgs, _ = read_handshake_messages(record(22, message(2, sample_server_hello()), 0x7F17))
    assert len(msgs) == 1


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"\x16\x03\x01\x02\x00\x01", True),
        (b"\x16\x03\x03", True),
        (b"\x17\x03\x03\x00\x20", True),
        (b"\x16\x03", False),  # too short to tell
        (b"\x16\x03\x09\x00\x10", False),
        (b"\x18\x03\x03\x00\x10", False),
        (b"GET / HTTP/1.1", False),
        (b"\x80\x2e\x01\x00\x02", True),  # SSLv2 CLIENT-HELLO offering SSL 2.0
        (b"\x80\x2e\x01\x03\x01", True),  # ... offering TLS 1.0
        (b"\x80\x2e\x01\x12\x34", False),
        (b"\x83\xa6\x04\x00\x01\x00\x02", True),  # SSLv2 SERVER-HELLO
        (b"\x80\x2e\x05\x00\x02", False),
    ],
)
def test_looks_like_tls(data: bytes, expected: bool) -> None:
    assert looks_like_tls(data) is expected


def test_tls_names() -> None:
    assert version_name(0x0002) == "SSL 2.0"
    assert version_name(0x0300) == "SSL 3.0"
    assert [version_name(v) for v in (0x0301, 0x0302, 0x0303, 0x0304)] == [
        "TLS 1.0", "TLS 1.1", "TLS 1.2", "TLS 1.3"]
    assert version_name(0x7F1C) == "TLS 1.3 draft 28"
    assert version_name(0x0305) == "0x0305"
    assert cipher_name(0x1301) == "TLS_AES_128_GCM_SHA256"
    assert cipher_name(0x00FF) == "TLS_EMPTY_RENEGOTIATION_INFO_SCSV"
    assert cipher_name(0x5600) == "TLS_FALLBACK_SCSV"
    assert cipher_name(0xCCA9) == "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256"
    assert cipher_name(0x0A0A) is None and cipher_name(0xD004) is None
    assert all(is_grease(0x0A0A + 0x1010 * i) for i in range(16))
    assert not is_grease(0x0A1A) and not is_grease(0x1301)
    assert group_name(0x11EC) == "X25519MLKEM768"


def test_cipher_names_cover_the_corpus(corpus_dir: Path) -> None:
    # Every non-GREASE suite that a corpus server picked has an IANA name.
    picked = set()
    for path in corpus_files():
        for conn in oracle(path)["tls_connections"]:
            if conn.get("cipher_suite"):
                picked.add(int(conn["cipher_suite"], 16))
    assert picked and all(cipher_name(c) for c in picked)
