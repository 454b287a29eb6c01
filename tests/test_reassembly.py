"""Tests for residency_monitor.reassembly: ordering, overlaps, wrap-around and hostile input."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from residency_monitor.reassembly import MAX_CHUNKS, MAX_START_MOVES, Datagram, StreamBuffer

MOD = 1 << 32
STREAM = bytes(range(256)) * 8  # 2048 distinct-ish bytes, so misplacement shows
SEGS = [(0, 300), (300, 1000), (1000, 1400), (1400, 2048)]  # 4 segments, unequal sizes


def seg(isn: int, start: int, end: int, stream: bytes = STREAM) -> tuple[int, bytes]:
    """The segment carrying stream[start:end] of a connection whose SYN used ``isn``."""
    return (isn + 1 + start) % MOD, stream[start:end]


def with_isn(isn: int = 1000, cap: int = 65536, **kw: int) -> StreamBuffer:
    buf = StreamBuffer(cap, **kw)
    buf.set_isn(isn)
    return buf


# -- basics -------------------------------------------------------------------------


def test_in_order() -> None:
    buf = with_isn()
    for a, b in SEGS:
        assert buf.add(*seg(1000, a, b)) is True
        assert buf.data == STREAM[:b]
    s = buf.stats
    assert (s.segments, s.out_of_order, s.overlap_bytes, s.dropped_bytes) == (4, 0, 0, 0)
    assert not buf.overflowed
    assert buf.held_segments == 0


def test_single_segment_is_not_copied() -> None:
    payload = STREAM[:1400]
    buf = with_isn()
    buf.add(1001, payload)
    assert buf.data is payload


def test_empty_payload_is_ignored() -> None:
    buf = StreamBuffer()
    assert buf.add(5, b"") is False
    assert buf.data == b""
    assert buf.stats.segments == 0
    # An empty segment does not define the inferred start either.
    assert buf.add(100, b"abc") is True
    assert buf.data == b"abc"


def test_memoryview_payload_is_copied() -> None:
    backing = bytearray(b"xxhelloxx")
    buf = with_isn(0)
    buf.add(1, memoryview(backing)[2:7])
    backing[2:7] = b"#####"
    assert buf.data == b"hello"


def test_rejects_bad_limits() -> None:
    with pytest.raises(ValueError):
        StreamBuffer(0)
    with pytest.raises(ValueError):
        StreamBuffer(1 << 31)
    with pytest.raises(ValueError):
        StreamBuffer(max_held=0)


@pytest.mark.parametrize("order", list(itertools.permutations(range(4))))
def test_out_of_order_permutations(order: tuple[int, ...]) -> None:
    buf = with_isn()
    prefix_end = 0
    delivered: set[int] = set()
    for i in order:
        delivered.add(i)
        grew = buf.add(*seg(1000, *SEGS[i]))
        # The prefix is everything up to the first undelivered segment.
        new_end = next((SEGS[j][0] for j in range(4) if j not in delivered), len(STREAM))
        assert grew is (new_end > prefix_end)
        prefix_end = new_end
        assert buf.data == STREAM[:prefix_end]
    assert buf.data == STREAM
    assert buf.held_segments == 0
    assert buf.stats.overlap_bytes == 0
    assert buf.stats.out_of_order == sum(
        1 for k, i in enumerate(order) if any(j < i and j not in order[:k] for j in range(i))
    )


@pytest.mark.parametrize("order", list(itertools.permutations(range(4))))
def test_out_of_order_permutations_without_isn(order: tuple[int, ...]) -> None:
    """Without a SYN the start moves back to the lowest segment once it arrives."""
    buf = StreamBuffer()
    for i in order:
        buf.add(*seg(1000, *SEGS[i]))
    assert buf.data == STREAM
    assert buf.stats.start_moves == sum(
        1 for k, i in enumerate(order) if k and i < min(order[:k])
    )


# -- retransmission and overlap: first copy wins --------------------------------------


def test_retransmission() -> None:
    buf = with_isn()
    buf.add(*seg(1000, 0, 300))
    buf.add(*seg(1000, 300, 1000))
    assert buf.add(*seg(1000, 0, 300)) is False
    assert buf.add(*seg(1000, 300, 1000)) is False
    assert buf.data == STREAM[:1000]
    assert buf.stats.overlap_bytes == 1000
    assert buf.stats.segments == 4


def test_retransmitted_out_of_order_segment() -> None:
    buf = with_isn()
    assert buf.add(*seg(1000, 1000, 1400)) is False
    assert buf.add(*seg(1000, 1000, 1400)) is False
    assert buf.held_segments == 1
    assert buf.buffered_bytes == 400
    assert buf.stats.overlap_bytes == 400
    assert buf.add(*seg(1000, 0, 1000)) is True
    assert buf.data == STREAM[:1400]


def test_overlap_with_prefix_tail_keeps_first_bytes() -> None:
    buf = with_isn(0)
    buf.add(1, b"AAAA")
    assert buf.add(3, b"bbbb") is True  # offsets 2..6: 2,3 already held
    assert buf.data == b"AAAAbb"
    assert buf.stats.overlap_bytes == 2


def test_overlap_before_held_piece_keeps_held_bytes() -> None:
    buf = with_isn(0)
    buf.add(1, b"AAAA")
    buf.add(7, b"CCCC")  # offsets 6..10, held
    assert buf.add(5, b"xxxxxx") is True  # offsets 4..10: 4,5 new, 6..9 held
    assert buf.data == b"AAAAxxCCCC"
    assert buf.stats.overlap_bytes == 4


def test_overlap_around_held_pieces_both_sides() -> None:
    buf = with_isn(0)
    buf.add(11, b"CCC")  # offsets 10..13
    buf.add(21, b"DDD")  # offsets 20..23
    # Covers 8..26: overlaps both held pieces; only the gaps take the new bytes.
    assert buf.add(9, b"y" * 18) is False  # still a gap at 0..8
    assert buf.held_segments == 5
    assert buf.stats.overlap_bytes == 6
    assert buf.add(1, b"z" * 12) is True  # offsets 0..12: 8..12 already held
    assert buf.data == b"z" * 8 + b"yyCCCyyyyyyyDDDyyy"
    assert buf.stats.overlap_bytes == 6 + 4
    assert buf.held_segments == 0


def test_overlap_covering_the_whole_prefix_and_more() -> None:
    buf = with_isn(0)
    buf.add(1, b"abc")
    assert buf.add(1, b"XYZdef") is True
    assert buf.data == b"abcdef"


def test_gap_that_never_fills() -> None:
    buf = with_isn()
    buf.add(*seg(1000, 0, 300))
    for a, b in [(1000, 1400), (1400, 2048)]:
        assert buf.add(*seg(1000, a, b)) is False
    assert buf.data == STREAM[:300]
    assert buf.held_segments == 2
    assert buf.buffered_bytes == 300 + 1048
    assert buf.stats.out_of_order == 2  # both began past the end of the prefix
    assert not buf.overflowed


# -- 32-bit wrap-around -------------------------------------------------------------


@pytest.mark.parametrize("isn", [MOD - 1, MOD - 2, MOD - 301, MOD - 1001, MOD - 1500])
@pytest.mark.parametrize("order", [(0, 1, 2, 3), (3, 2, 1, 0), (1, 3, 0, 2)])
def test_wrap_around(isn: int, order: tuple[int, ...]) -> None:
    buf = with_isn(isn)
    for i in order:
        buf.add(*seg(isn, *SEGS[i]))
    assert buf.data == STREAM


@pytest.mark.parametrize("order", [(0, 1, 2, 3), (3, 2, 1, 0), (2, 0, 3, 1)])
def test_wrap_around_without_isn(order: tuple[int, ...]) -> None:
    isn = MOD - 1001  # stream offset 1000 sits exactly on the wrap
    buf = StreamBuffer()
    for i in order:
        buf.add(*seg(isn, *SEGS[i]))
    assert buf.data == STREAM


def test_segment_before_fixed_start_is_trimmed() -> None:
    buf = with_isn(MOD - 1)  # data starts at sequence 0
    assert buf.add(MOD - 3, b"xxxhello") is True  # three bytes before the start, across the wrap
    assert buf.data == b"hello"
    assert buf.stats.dropped_bytes == 3
    assert buf.add(MOD - 10, b"old") is False
    assert buf.stats.dropped_bytes == 6


# -- cap and hostile input ----------------------------------------------------------


def test_cap_reached() -> None:
    buf = with_isn(0, cap=100)
    assert buf.add(1, b"a" * 60) is True
    assert not buf.overflowed
    assert buf.add(61, b"b" * 60) is True
    assert buf.data == b"a" * 60 + b"b" * 40
    assert buf.overflowed
    assert buf.stats.dropped_bytes == 20
    assert buf.add(121, b"c" * 1000) is False
    assert buf.add(5000, b"d" * 10) is False
    assert buf.stats.dropped_bytes == 20 + 1000 + 10
    assert buf.buffered_bytes == 100
    assert len(buf.data) == 100


def test_held_segments_are_trimmed_to_cap() -> None:
    buf = with_isn(0, cap=100)
    assert buf.add(91, b"x" * 50) is False  # offsets 90..140: only 90..100 kept
    assert buf.add(201, b"y" * 10) is False  # entirely beyond the cap
    assert buf.buffered_bytes == 10
    assert buf.stats.dropped_bytes == 40 + 10
    buf.add(1, b"a" * 90)
    assert buf.data == b"a" * 90 + b"x" * 10
    assert buf.overflowed


def test_exact_cap_is_overflowed() -> None:
    buf = with_isn(0, cap=10)
    buf.add(1, b"0123456789")
    assert buf.overflowed
    assert buf.stats.dropped_bytes == 0


def test_far_away_sequence_numbers_are_dropped() -> None:
    buf = with_isn(0)
    buf.add(1, b"hello")
    for far in (1 << 20, 1 << 30, (1 << 31) + 5, MOD - 70000):
        assert buf.add(far, b"z" * 1000) is False
    assert buf.data == b"hello"
    assert buf.buffered_bytes == 5
    assert buf.stats.dropped_bytes == 4000


def test_flood_of_tiny_out_of_order_segments_is_bounded() -> None:
    rng = random.Random(7)
    cap = 4096
    buf = with_isn(0, cap=cap, max_held=64)
    for _ in range(20000):
        off = rng.randrange(1, 3 * cap)
        buf.add(1 + off, STREAM[off % 2048: off % 2048 + 1])  # the real stream's byte
        assert buf.buffered_bytes <= cap
        assert buf.held_segments <= 64
    assert buf.data == b""
    # The nearest pieces survived, so the real stream still assembles.
    for start in range(0, cap, 1000):
        buf.add(1 + start, (STREAM * 2)[start: start + 1000])
    assert buf.data == (STREAM * 2)[:cap]
    assert buf.overflowed
    assert buf.held_segments == 0


def test_flood_of_tiny_in_order_segments_is_bounded() -> None:
    cap = 20000
    buf = with_isn(0, cap=cap)
    stream = (STREAM * 10)[:cap]
    for i in range(cap):
        assert buf.add(1 + i, stream[i: i + 1]) is True
        assert len(buf._chunks) <= MAX_CHUNKS
    assert buf.data == stream
    assert buf.data is buf.data  # joined once, then cached
    assert buf.overflowed


def test_repeated_overlaps_do_not_grow_memory() -> None:
    buf = with_isn(0, cap=1000)
    buf.add(1, b"a" * 100)
    buf.add(301, b"c" * 100)
    for i in range(5000):
        buf.add(1 + (i % 350), b"z" * 60)
    assert buf.buffered_bytes <= 1000
    assert buf.data.startswith(b"a" * 100)
    assert buf.data[300:400] == b"c" * 100


def test_full_held_table_evicts_the_farthest_piece() -> None:
    buf = with_isn(0, max_held=2)
    buf.add(101, b"far")  # offset 100
    buf.add(51, b"mid")  # offset 50
    buf.add(11, b"near")  # offset 10: evicts the piece at 100
    assert buf.held_segments == 2
    assert buf.stats.dropped_bytes == 3
    buf.add(201, b"farther")  # beyond every held piece: refused
    assert buf.stats.dropped_bytes == 10
    buf.add(1, b"0123456789")
    assert buf.data == b"0123456789near"


# -- stream start without a SYN ------------------------------------------------------


def test_no_isn_first_segment_defines_start() -> None:
    buf = StreamBuffer()
    assert buf.add(123456, b"mid-flow") is True
    assert buf.data == b"mid-flow"
    assert buf.add(123464, b"!") is True
    assert buf.data == b"mid-flow!"


def test_no_isn_lower_segment_moves_start_back() -> None:
    buf = StreamBuffer()
    buf.add(5000, b"world")
    assert buf.add(4994, b"hello ") is True
    assert buf.data == b"hello world"
    assert buf.stats.start_moves == 1


def test_no_isn_move_back_with_a_gap_keeps_later_bytes_held() -> None:
    buf = StreamBuffer()
    buf.add(5000, b"C")
    assert buf.add(4990, b"A") is True  # the front changed: the caller must re-parse
    assert buf.data == b"A"
    assert buf.buffered_bytes == 2
    buf.add(4991, b"B" * 9)
    assert buf.data == b"A" + b"B" * 9 + b"C"


def test_no_isn_move_back_keeps_first_copy_of_overlap() -> None:
    buf = StreamBuffer()
    buf.add(5000, b"first")
    buf.add(4998, b"..SECOND")  # offsets 0..8 against "first" at 2..7
    assert buf.data == b"..firstD"
    assert buf.stats.overlap_bytes == 5


def test_no_isn_start_does_not_move_past_cap() -> None:
    buf = StreamBuffer(cap=100)
    buf.add(5000, b"x" * 60)
    assert buf.add(4950, b"y" * 10) is False  # would push held bytes to offset 110
    assert buf.data == b"x" * 60
    assert buf.stats.dropped_bytes == 10
    assert buf.stats.start_moves == 0
    assert buf.add(4960, b"y" * 10) is True  # 40 back: everything still fits
    assert buf.data == b"y" * 10
    assert buf.buffered_bytes == 70


def test_no_isn_start_moves_are_limited() -> None:
    buf = StreamBuffer()
    for k in range(MAX_START_MOVES + 5):
        buf.add(10000 - 10 * k, b"z")
    assert buf.stats.start_moves == MAX_START_MOVES
    assert buf.buffered_bytes == MAX_START_MOVES + 1


def test_set_isn_after_data_rehomes_it() -> None:
    buf = StreamBuffer()
    buf.add(1100, b"later")  # arrived before the SYN-ACK was seen
    buf.add(1200, b"held")
    buf.set_isn(999)  # data starts at 1000
    assert buf.data == b""
    assert buf.buffered_bytes == 9
    assert buf.add(1000, b"p" * 100) is True
    assert buf.data == b"p" * 100 + b"later"


def test_set_isn_after_data_drops_bytes_before_the_start() -> None:
    buf = StreamBuffer()
    buf.add(995, b"0123456789")
    buf.set_isn(999)
    assert buf.data == b"56789"
    assert buf.stats.dropped_bytes == 5


def test_first_isn_wins() -> None:
    buf = with_isn(1000)
    buf.set_isn(5000)
    buf.add(1001, b"abc")
    assert buf.data == b"abc"


def test_fixed_start_does_not_move() -> None:
    buf = with_isn(1000)
    buf.add(1101, b"x")
    assert buf.add(1051, b"y") is False  # in the gap: held, the prefix is still empty
    assert buf.add(991, b"z" * 10) is False  # before ISN+1: dropped
    assert buf.stats.start_moves == 0
    assert buf.stats.dropped_bytes == 10


# -- properties ----------------------------------------------------------------------


@st.composite
def delivery(draw: st.DrawFn) -> tuple[bytes, int, int, list[tuple[int, int]]]:
    """A stream, a cap, an ISN, and segments (start, end) covering it, with duplicates
    and overlaps, in a random delivery order."""
    stream = draw(st.binary(min_size=1, max_size=3000))
    n = len(stream)
    cap = draw(st.one_of(st.just(65536), st.integers(1, n + 10)))
    isn = draw(st.one_of(st.integers(0, MOD - 1), st.integers(MOD - n - 2, MOD - 1)))
    cuts = sorted(set(draw(st.lists(st.integers(1, n - 1), max_size=20)) if n > 1 else []))
    bounds = [0, *cuts, n]
    segs = list(itertools.pairwise(bounds))
    extra = draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(1, 400)), max_size=15))
    segs += [(a, min(n, a + k)) for a, k in extra]
    segs += draw(st.lists(st.sampled_from(segs), max_size=5))  # exact duplicates
    return stream, cap, isn, draw(st.permutations(segs))


@settings(max_examples=300)
@given(delivery())
def test_property_any_order_reassembles_prefix(
    case: tuple[bytes, int, int, list[tuple[int, int]]],
) -> None:
    stream, cap, isn, segs = case
    buf = with_isn(isn, cap=cap)
    for a, b in segs:
        buf.add(*seg(isn, a, b, stream))
        assert buf.buffered_bytes <= cap
        assert stream[: len(buf.data)] == buf.data
    assert buf.data == stream[:cap]
    assert buf.held_segments == 0
    assert buf.overflowed is (len(stream) >= cap)


@settings(max_examples=200)
@given(delivery())
def test_property_without_isn_recovers_the_start(
    case: tuple[bytes, int, int, list[tuple[int, int]]],
) -> None:
    stream, _, isn, segs = case
    buf = StreamBuffer()  # default cap: every move back fits
    for a, b in segs:
        buf.add(*seg(isn, a, b, stream))
    if buf.stats.start_moves < MAX_START_MOVES:
        assert buf.data == stream
    else:  # the move limit can stop it short, but never corrupts what it kept
        assert stream.find(buf.data) >= 0


@settings(max_examples=300)
@given(
    st.integers(1, 300),
    st.lists(st.tuples(st.integers(-50, 400), st.binary(min_size=1, max_size=80)), max_size=40),
)
def test_property_first_copy_wins(cap: int, segs: list[tuple[int, bytes]]) -> None:
    """Segments with conflicting bytes: compare with a byte-by-byte first-wins model."""
    model: dict[int, int] = {}
    for off, payload in segs:
        for k, byte in enumerate(payload):
            if 0 <= off + k < cap:
                model.setdefault(off + k, byte)
    expect = bytearray()
    while len(expect) in model:
        expect.append(model[len(expect)])

    buf = with_isn(MOD - 100, cap=cap, max_held=10_000)  # no eviction: the model has none
    for off, payload in segs:
        buf.add((MOD - 99 + off) % MOD, payload)
    assert buf.data == bytes(expect)
    assert buf.buffered_bytes == len(model)
    assert buf.overflowed is (len(expect) >= cap)


# -- fragmented UDP datagrams ---------------------------------------------------------

def _cut(payload: bytes, size: int) -> list[tuple[int, bool, bytes]]:
    """Later fragments of a datagram whose first fragment held ``size`` payload bytes:
    (IP offset, more, data), where the IP offset counts the 8-byte UDP header."""
    out = []
    for start in range(size, len(payload), size + 8):
        end = min(start + size + 8, len(payload))
        out.append((start + 8, end < len(payload), payload[start:end]))
    return out


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=9, max_size=3000), st.integers(1, 40), st.randoms())
def test_datagram_any_order_gives_the_payload_once(payload, units, rnd):
    size = units * 8
    if size >= len(payload):
        size = 8
    later = _cut(payload, size)
    rnd.shuffle(later)
    dg = Datagram(8 + len(payload), payload[:size])
    results = [dg.add(*piece) for piece in later]
    assert results[-1] == payload and not any(results[:-1]) and dg.failed is None


@pytest.mark.parametrize("pieces, why", [
    ([(8 + 100, True, b"y" * 100), (8 + 96, False, b"z" * 104)], "overlapping fragments"),
    ([(8 + 100, False, b"y" * 50)], "last fragment disagrees with the UDP length"),
    ([(8 + 100, True, b"y" * 400)], "fragment outside the datagram"),
    ([(0, True, b"y" * 8)], "fragment outside the datagram"),   # would rewrite the header
])
def test_datagram_refuses_what_cannot_be_one(pieces, why):
    dg = Datagram(8 + 300, b"x" * 100)
    for piece in pieces:
        assert dg.add(*piece) is None
    assert dg.failed == why
    assert dg.add(8 + 100, True, b"y" * 100) is None   # and it stays given up


def test_datagram_udp_length_must_cover_the_first_fragment():
    assert Datagram(8 + 10, b"x" * 100).failed == "UDP length disagrees with the fragment"
