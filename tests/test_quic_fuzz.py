"""Fuzzing the QUIC parsers and the per-flow state: only the contract's outcomes may happen.

As mitmproxy does for its ClientHello parser: real Initial datagrams are cut
at every offset, get random bytes appended or a byte flipped; pure noise is
fed too; and CRYPTO frames with overlapping and absurd offsets (up to
2^62-1) are encrypted into real Initials. ``parse_long_header`` and
``iter_long_headers`` may return a result or None or raise ParseError;
``parse_frames`` always returns; ``QuicHandshake.feed`` never raises. Samples
come from the RFC 9001 / RFC 9369 vectors and hand-made flows always, and
from the corpus when it is present, so this file never skips.
"""

from __future__ import annotations

import random

import pytest
from conftest import CORPUS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_quic import (
    CLIENT_PAYLOAD,
    RFC9001_CLIENT_PACKET,
    RFC9001_SERVER_PACKET,
    RFC9369_CLIENT_PACKET,
    RFC9369_RETRY,
    RFC9369_SERVER_PACKET,
    SERVER_PAYLOAD,
    _hex,
    big_client_hello,
    client_initial,
    crypto_frame,
    server_hello_msg,
    server_initial,
    udp_flows,
)

from residency_monitor import quic, tls
from residency_monitor.quic import ParseError, QuicHandshake

FUZZ = settings(max_examples=300, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])

Flow = list[tuple[bytes, bool]]


def _synthetic_flows() -> list[Flow]:
    ch = big_client_hello()
    return [
        [(_hex(RFC9001_CLIENT_PACKET), True), (_hex(RFC9001_SERVER_PACKET), False)],
        [(_hex(RFC9369_CLIENT_PACKET), True), (_hex(RFC9369_RETRY), False),
         (_hex(RFC9369_SERVER_PACKET), False)],
        [(client_initial(crypto_frame(1000, ch[1000:]) + crypto_frame(0, ch[:1000]), 0), True),
         (server_initial(crypto_frame(0, server_hello_msg()), 0), False)],
    ]


def _corpus_flows() -> list[Flow]:
    names = ("zeek-chromium-115.0.5790.110-api-cirrus-com.pcap", "sv-quic-frag.pcap",
             "sv-quic-retry.pcap", "zeek-quicv2-echo-443.pcap")
    out = []
    for name in names:
        if (CORPUS / name).is_file():
            for flow in udp_flows(CORPUS / name).values():
                out.append(flow[:8])  # the Initials are all in the first few datagrams
    return out


FLOWS = _synthetic_flows() + _corpus_flows()
DATAGRAMS = [dg for flow in FLOWS for dg, _ in flow if dg[0] & 0x80]


def check_parsers(dg: bytes) -> None:
    """The header parsers: a result, None, or ParseError; nothing else."""
    try:
        headers = quic.iter_long_headers(dg)
    except ParseError:
        headers = []
    for hdr in headers:
        assert 0 <= hdr.offset < hdr.pn_offset <= hdr.end <= len(dg)
    for off in (0, 1, len(dg) // 2):
        try:
            hdr = quic.parse_long_header(dg, off)
        except ParseError:
            continue
        assert hdr is None or hdr.end <= len(dg)


def check_flow(flow: Flow, max_crypto: int = 65536) -> QuicHandshake:
    """Feed a flow: feed returns a bool every time and the state stays consistent."""
    h = QuicHandshake(max_crypto=max_crypto)
    for dg, from_client in flow:
        check_parsers(dg)
        assert h.feed(dg, from_client) in (True, False)
    assert all(v >= 0 for v in (h.stats.undecryptable, h.stats.crypto_bytes_dropped,
                                h.stats.parse_errors, h.initial_packets))
    for stream in h._streams:
        if stream is not None:
            assert len(stream.buf) <= max_crypto
    if h.done:
        assert h.feed(b"\xc0" + bytes(50), True)
    return h


def test_every_cut_of_every_sample() -> None:
    for flow in FLOWS:
        for i, (dg, _) in enumerate(flow):
            for cut in range(len(dg) + 1):
                check_flow(flow[:i] + [(dg[:cut], flow[i][1])])


def test_the_unharmed_samples_parse() -> None:
    finished = [check_flow(flow) for flow in FLOWS]
    assert all(h.client_hello is not None for h in finished)


@FUZZ
@given(data=st.data(), tail=st.binary(max_size=64))
def test_cut_and_random_tail(data: st.DataObject, tail: bytes) -> None:
    flow = data.draw(st.sampled_from(FLOWS))
    i = data.draw(st.integers(0, len(flow) - 1))
    dg, from_client = flow[i]
    cut = data.draw(st.integers(0, len(dg)))
    check_flow(flow[:i] + [(dg[:cut] + tail, from_client)] + flow[i + 1:])


@FUZZ
@given(data=st.data())
def test_flipped_bytes(data: st.DataObject) -> None:
    flow = data.draw(st.sampled_from(FLOWS))
    i = data.draw(st.integers(0, len(flow) - 1))
    dg = bytearray(flow[i][0])
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(dg) - 1))
        dg[pos] ^= data.draw(st.integers(1, 255))
    check_flow(flow[:i] + [(bytes(dg), flow[i][1])] + flow[i + 1:])


VERSIONS = [0, 1, quic.QUIC_V2, 0xFF00001D, 0xFF000022, 0x1A2A3A4A, 0x709A50C4]


@FUZZ
@given(noise=st.binary(max_size=1500), first=st.integers(0, 255),
       version=st.one_of(st.sampled_from(VERSIONS), st.integers(0, 2**32 - 1)),
       from_client=st.booleans())
def test_random_bytes(noise: bytes, first: int, version: int, from_client: bool) -> None:
    dg = bytes((first,)) + version.to_bytes(4, "big") + noise
    check_parsers(noise)
    check_flow([(dg, from_client), (noise, not from_client), (dg, from_client)])


@FUZZ
@given(payload=st.one_of(st.binary(max_size=400),
                         st.sampled_from([CLIENT_PAYLOAD, SERVER_PAYLOAD]).flatmap(
                             lambda p: st.tuples(st.just(p), st.integers(0, len(p)),
                                                 st.binary(max_size=32)).map(
                                 lambda t: t[0][:t[1]] + t[2]))))
def test_frames_never_raise(payload: bytes) -> None:
    frames = quic.parse_frames(payload)
    assert sum(len(d) for _, d in frames.crypto) <= len(payload)
    assert all(0 <= off <= 2**62 - 1 for off, _ in frames.crypto)


# ---------------------------------------------------------------------------
# CRYPTO reassembly: overlapping, reordered, absurd offsets
# ---------------------------------------------------------------------------

CH = big_client_hello(share=1500)  # spans two Initials, like an ML-KEM ClientHello
ABSURD = [2**62 - 1, 2**62 - 64, 2**40, 65_536, 10**9]  # all beyond the 64 KiB bound


@st.composite
def crypto_pieces(draw: st.DrawFn) -> tuple[list[tuple[int, bytes]], bool, int]:
    """Pieces of CH (maybe overlapping, maybe not covering it) plus absurd ones, shuffled."""
    cuts = sorted(draw(st.lists(st.integers(1, len(CH) - 1), max_size=8, unique=True)))
    bounds = [0, *cuts, len(CH)]
    pieces: list[tuple[int, bytes]] = []
    covered = True
    for a, b in zip(bounds, bounds[1:], strict=False):
        if draw(st.integers(0, 9)) == 0:
            covered = False  # a lost piece
            continue
        a = max(0, a - draw(st.integers(0, 40)))  # overlap with the piece before
        pieces.append((a, CH[a:b]))
    absurd = 0
    for off in draw(st.lists(st.sampled_from(ABSURD), max_size=3)):
        n = draw(st.integers(0, 20))
        off = min(off, 2**62 - 1 - n)
        pieces.append((off, bytes(n)))
        absurd += n
    order = draw(st.permutations(range(len(pieces))))
    return [pieces[i] for i in order], covered, absurd


@FUZZ
@given(spec=crypto_pieces(), packets=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_crypto_reassembly(spec: tuple[list[tuple[int, bytes]], bool, int], packets: int,
                           seed: int) -> None:
    pieces, covered, absurd = spec
    rng = random.Random(seed)
    groups: list[list[tuple[int, bytes]]] = [[] for _ in range(packets)]
    for piece in pieces:
        groups[rng.randrange(packets)].append(piece)
    # Split any packet whose frames would not fit one Initial.
    datagrams: list[tuple[bytes, bool]] = []
    pn = 0
    for group in groups:
        frames = b""
        for off, data in group:
            frame = crypto_frame(off, data)
            if len(frames) + len(frame) > 1100:
                datagrams.append((client_initial(frames, pn), True))
                pn, frames = pn + 1, b""
            frames += frame
        datagrams.append((client_initial(frames or b"\x01", pn), True))
        pn += 1
    h = check_flow(datagrams)
    assert h.stats.undecryptable == 0
    if covered:
        assert h.client_hello == tls.parse_client_hello(CH[4:])
    assert h.stats.crypto_bytes_dropped >= absurd


@FUZZ
@given(adds=st.lists(st.tuples(st.integers(0, 80), st.binary(max_size=24)), max_size=20),
       limit=st.integers(1, 64))
def test_crypto_stream_matches_a_byte_model(adds: list[tuple[int, bytes]], limit: int) -> None:
    stream = quic._CryptoStream(limit)
    model: dict[int, int] = {}
    for off, data in adds:
        dropped = stream.add(off, data)
        assert dropped == max(0, off + len(data) - max(off, limit))
        for i, b in enumerate(data):
            if off + i < limit:
                model.setdefault(off + i, b)  # the first copy of a byte wins
    have = 0
    while have in model:
        have += 1
    assert stream.contiguous() == have
    assert bytes(stream.buf[:have]) == bytes(model[i] for i in range(have))
    assert set(model) == {i for s, e in stream.pieces for i in range(s, e)}


def test_crypto_stream_refuses_to_be_shredded() -> None:
    stream = quic._CryptoStream(65536)
    for i in range(400):  # one byte every other offset: a piece each
        stream.add(2 * i + 1, b"x")
    assert len(stream.pieces) <= 256
    stream.add(0, bytes(1000))  # a real frame still fills the gaps
    assert stream.contiguous() == 1000


@pytest.mark.parametrize("offset", [2**62 - 1, 2**62 - 5])
def test_largest_offsets_in_a_real_initial(offset: int) -> None:
    frame = b"\x06" + (0xC000000000000000 | offset).to_bytes(8, "big") + b"\x04abcd"
    h = QuicHandshake()
    assert not h.feed(client_initial(frame + crypto_frame(0, CH[:10]), 0), True)
    # beyond 2^62-1 the frame is invalid and stops reading; at or below it is dropped
    assert h.stats.frame_errors == (1 if offset + 4 > 2**62 - 1 else 0)
    assert h.stats.crypto_bytes_dropped == (0 if h.stats.frame_errors else 4)
