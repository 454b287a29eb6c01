"""Reassembly: the first bytes of each TCP direction, and fragmented UDP datagrams.

The monitor reads only the start of each TCP direction (a TLS ClientHello or
ServerHello, a protocol banner), so :class:`StreamBuffer` keeps at most ``cap``
bytes of one direction, in sequence order, and nothing after them. dpkt has no
TCP reassembly, and a parser that looks only at the first segment silently loses
the SNI of a post-quantum ClientHello split over two segments (FIELD-NOTES §1.3).

Policies, chosen so that hostile input can neither grow memory nor rewrite bytes
a parser has already read:

* **Overlaps: the first copy of a byte wins**, as in Zeek's reassembler. A
  retransmission cannot change bytes already handed to a parser, and a sender
  cannot "correct" a segment after the fact (a classic IDS evasion).
* **Out-of-order segments are held**, trimmed to ``[0, cap)`` and to the gaps
  between bytes already held, so the prefix plus the held bytes never exceed
  ``cap``. At most ``max_held`` pieces are held; when full, the farthest piece
  is evicted in favour of a nearer one, because only near bytes can complete the
  prefix (an evicted byte loses its first-wins claim). Bytes past ``cap``, before
  a fixed start, evicted or refused are counted as dropped.
* **Stream start.** :meth:`StreamBuffer.set_isn` fixes it at ISN + 1, and the
  first ISN wins. Without it (capture began mid-flow, SYN lost) the first data
  segment defines the start, and a later segment with a lower sequence number
  moves it back, as long as nothing held would be pushed past ``cap`` and at
  most ``MAX_START_MOVES`` times (each move re-homes up to ``cap`` bytes).
  Reading ``data`` does not pin the start: callers re-parse ``data`` from
  offset 0 whenever :meth:`StreamBuffer.add` returns True, so a rewritten front
  takes the same path as growth, and a caller that has parsed its handshake
  stops feeding the buffer anyway. Pinning on read would mean a reordered
  first segment (seen second) could never be recovered.
* **Sequence numbers** are compared modulo 2**32 as signed 32-bit distances
  from the start (serial-number arithmetic), so a stream crossing 2**32
  reassembles like any other.

:class:`Datagram` puts one fragmented UDP datagram back together (a DNS answer
larger than the path MTU arrives as IP fragments, FIELD-NOTES §2). Unlike a
stream it must be whole or nothing: an overlapping fragment discards the
datagram (RFC 5722; Linux drops overlaps too), and so does a total that
disagrees with the UDP length field.

Pure: no I/O, no clock.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass

_MOD = 1 << 32
_MASK = _MOD - 1
_HALF = 1 << 31

#: In-order chunks kept as separate ``bytes`` before they are spilled into one
#: bytearray: bounds object overhead under a flood of tiny segments while the
#: common one- or two-segment handshake is never copied before it is read.
MAX_CHUNKS = 32
#: How often an inferred start may move back; a reordered handshake needs one
#: or two, and each move costs a copy of up to ``cap`` bytes.
MAX_START_MOVES = 16


def _signed(delta: int) -> int:
    """A sequence-number difference as a signed 32-bit distance."""
    delta &= _MASK
    return delta - _MOD if delta >= _HALF else delta


@dataclass(frozen=True, slots=True)
class StreamStats:
    """Counters of one direction, for metrics and debugging."""

    segments: int  # non-empty segments offered
    out_of_order: int  # segments beginning past the contiguous end or before the start
    overlap_bytes: int  # bytes received again (retransmission, overlap); the first copy kept
    dropped_bytes: int  # bytes discarded: past cap, before the start, evicted, held table full
    start_moves: int  # times an inferred start moved back


class StreamBuffer:
    """Reassembles the first `cap` bytes of one TCP direction, in sequence order."""

    __slots__ = (
        "_cap", "_max_held", "_base", "_fixed", "_chunks", "_spill", "_cache", "_size",
        "_hstarts", "_hdata", "_hbytes", "_segments", "_ooo", "_overlap", "_dropped", "_moves",
    )

    def __init__(self, cap: int = 65536, *, max_held: int = 128) -> None:
        if not 1 <= cap < _HALF:
            raise ValueError(f"cap must be in [1, 2**31), got {cap}")
        if max_held < 1:
            raise ValueError(f"max_held must be >= 1, got {max_held}")
        self._cap = cap
        self._max_held = max_held
        self._base: int | None = None  # sequence number of stream offset 0
        self._fixed = False  # True once set_isn pinned the start
        self._counters_reset()
        self._clear_bytes()

    def _counters_reset(self) -> None:
        self._segments = self._ooo = self._overlap = self._dropped = self._moves = 0

    def _clear_bytes(self) -> None:
        # Contiguous prefix = spill + chunks; _size is its length.
        self._chunks: list[bytes] = []
        self._spill: bytearray | None = None
        self._cache = b""  # bytes(spill), valid while its length equals _size
        self._size = 0
        # Held out-of-order pieces: sorted, disjoint, all starting past _size.
        self._hstarts: list[int] = []
        self._hdata: list[bytes] = []
        self._hbytes = 0  # their total length: read per segment by the memory bound

    # -- input -----------------------------------------------------------------

    def set_isn(self, isn: int) -> None:
        """Fix the start at ``isn + 1`` (a SYN consumes one sequence number).

        The first ISN wins. Data buffered under an inferred start is re-homed
        (bytes before the new start are dropped), so callers should re-read ``data``.
        """
        if self._fixed:
            return
        self._fixed = True
        start = (isn + 1) & _MASK
        old, self._base = self._base, start
        if old is not None and old != start:
            self._rebase(_signed(old - start))

    def add(self, seq: int, payload: bytes | bytearray | memoryview) -> bool:
        """Add one segment; True when ``data`` changed (the caller should re-parse).

        ``data`` changes when the prefix grows, or when an inferred start moves back.
        Views are copied so that a held segment never pins a whole capture buffer.
        """
        n = len(payload)
        if not n:
            return False
        self._segments += 1
        if type(payload) is not bytes:
            payload = bytes(payload)
        base = self._base
        if base is None:
            self._base = seq & _MASK
            off = 0
        else:
            off = (seq - base) & _MASK
        size = self._size
        if off == size and size + n <= self._cap and not self._hstarts:
            # Hot path: the next in-order segment, nothing held.
            chunks = self._chunks
            chunks.append(payload)
            self._size = size + n
            if len(chunks) > MAX_CHUNKS:
                self._spill_chunks()
            return True
        return self._add_slow(_signed(off), seq, payload)

    def _add_slow(self, rel: int, seq: int, payload: bytes) -> bool:
        if rel < 0 or rel > self._size:
            self._ooo += 1
        if rel < 0 and self._may_move_start(rel):
            self._moves += 1
            self._base = seq & _MASK  # the segment's first byte is the new start
            self._rebase(-rel)
            self._place(0, payload)
            return True
        return self._place(rel, payload)

    def _may_move_start(self, rel: int) -> bool:
        """An inferred start may move back if no held byte is pushed past cap."""
        if self._fixed or self._moves >= MAX_START_MOVES:
            return False
        hstarts = self._hstarts
        extent = hstarts[-1] + len(self._hdata[-1]) if hstarts else self._size
        return extent - rel <= self._cap

    def _rebase(self, shift: int) -> None:
        """Re-place everything buffered ``shift`` bytes later (earlier if negative)."""
        segs = list(zip(self._hstarts, self._hdata, strict=True))
        if self._size:
            segs.insert(0, (0, self.data))
        self._clear_bytes()
        for off, seg in segs:
            self._place(off + shift, seg)

    # -- placement (offsets relative to the start) ------------------------------

    def _place(self, rel: int, payload: bytes) -> bool:
        """Trim to the window and to what is already held (first wins), then store."""
        end = rel + len(payload)
        if rel < 0:
            self._dropped += min(end, 0) - rel
            if end <= 0:
                return False
            payload, rel = payload[-rel:], 0
        cap = self._cap
        if end > cap:
            if rel >= cap:
                self._dropped += end - rel
                return False
            self._dropped += end - cap
            payload, end = payload[: cap - rel], cap
        size = self._size
        if rel < size:
            self._overlap += min(end, size) - rel
            if end <= size:
                return False
            payload, rel = payload[size - rel:], size
        if not self._hstarts:
            if rel == size:
                self._append(payload)
                return True
            self._hold(rel, payload)
            return False
        for pos, piece in self._uncovered(rel, payload):
            self._drain()
            if pos == self._size:
                self._append(piece)
            else:
                self._hold(pos, piece)
        self._drain()
        return self._size > size

    def _uncovered(self, rel: int, payload: bytes) -> list[tuple[int, bytes]]:
        """The parts of ``payload`` not covered by held pieces; counts the covered bytes."""
        starts, datas = self._hstarts, self._hdata
        end = rel + len(payload)
        pieces: list[tuple[int, bytes]] = []
        pos = rel
        i = max(bisect_right(starts, rel) - 1, 0)
        while i < len(starts) and pos < end:
            s = starts[i]
            if s >= end:
                break
            e = s + len(datas[i])
            if e > pos:
                if s > pos:
                    pieces.append((pos, payload[pos - rel: s - rel]))
                self._overlap += min(e, end) - max(s, pos)
                pos = e
            i += 1
        if pos < end:
            pieces.append((pos, payload[pos - rel:]))
        return pieces

    def _hold(self, pos: int, piece: bytes) -> None:
        """Hold an out-of-order piece; when full, keep the nearest pieces."""
        starts, datas = self._hstarts, self._hdata
        if len(starts) >= self._max_held:
            if pos > starts[-1]:
                self._dropped += len(piece)
                return
            starts.pop()
            gone = len(datas.pop())
            self._dropped += gone
            self._hbytes -= gone
        i = bisect_right(starts, pos)
        starts.insert(i, pos)
        datas.insert(i, piece)
        self._hbytes += len(piece)

    def _drain(self) -> None:
        """Move held pieces that now touch the prefix onto it."""
        starts, datas = self._hstarts, self._hdata
        while starts and starts[0] == self._size:
            del starts[0]
            piece = datas.pop(0)
            self._hbytes -= len(piece)
            self._append(piece)

    def _append(self, piece: bytes) -> None:
        chunks = self._chunks
        chunks.append(piece)
        self._size += len(piece)
        if len(chunks) > MAX_CHUNKS:
            self._spill_chunks()

    def _spill_chunks(self) -> None:
        """Fold chunks into one bytearray: amortised O(1) per byte, unlike re-joining."""
        spill = self._spill
        if spill is None:
            spill = self._spill = bytearray()
        for chunk in self._chunks:
            spill += chunk
        self._chunks.clear()

    # -- output ----------------------------------------------------------------

    @property
    def data(self) -> bytes:
        """The contiguous in-order prefix assembled so far (at most ``cap`` bytes)."""
        chunks = self._chunks
        if self._spill is None:
            if len(chunks) == 1:
                return chunks[0]
            joined = b"".join(chunks)
            self._chunks = [joined] if joined else []
            return joined
        if len(self._cache) != self._size:
            self._spill_chunks()
            self._cache = bytes(self._spill)
        return self._cache

    @property
    def overflowed(self) -> bool:
        """The prefix reached ``cap``: no further byte can be buffered, so give up."""
        return self._size >= self._cap

    @property
    def buffered_bytes(self) -> int:
        """Payload bytes held: the prefix plus out-of-order pieces (never above ``cap``)."""
        return self._size + self._hbytes

    @property
    def held_segments(self) -> int:
        """Out-of-order pieces waiting for a gap to fill (never above ``max_held``)."""
        return len(self._hstarts)

    @property
    def stats(self) -> StreamStats:
        return StreamStats(self._segments, self._ooo, self._overlap, self._dropped, self._moves)


#: the largest UDP payload an IP datagram can carry (IPv4: 65,535 - 20 - 8)
MAX_DATAGRAM = 65535


class Datagram:
    """The UDP payload of one fragmented datagram, collected fragment by fragment.

    Offsets are of the UDP payload: a later fragment's IP offset minus the
    8-byte UDP header that opens the first fragment. ``add`` returns the
    whole payload once every byte is there, else None; ``failed`` says why
    the datagram was given up (overlap, over length, inconsistent).
    """

    __slots__ = ("expected", "pieces", "held", "end", "failed")

    def __init__(self, udp_length: int, first: bytes):
        self.expected = udp_length - 8       # payload bytes the UDP header promises
        self.pieces: list[tuple[int, bytes]] = [(0, first)]
        self.held = len(first)
        self.end: int | None = None          # payload length, once the last fragment is in
        self.failed: str | None = None
        if self.expected < len(first) or self.expected > MAX_DATAGRAM:
            self.failed = "UDP length disagrees with the fragment"

    def add(self, ip_offset: int, more: bool, data: bytes) -> bytes | None:
        if self.failed:
            return None
        start = ip_offset - 8
        stop = start + len(data)
        if start < 0 or stop > self.expected:
            self.failed = "fragment outside the datagram"
            return None
        if any(start < e and b < stop for b, e in
               ((b, b + len(piece)) for b, piece in self.pieces)):
            self.failed = "overlapping fragments"
            return None
        if not more:
            if self.end is not None or stop != self.expected:
                self.failed = "last fragment disagrees with the UDP length"
                return None
            self.end = stop
        self.pieces.append((start, data))
        self.held += len(data)
        if self.end is None or self.held != self.end:
            return None
        self.pieces.sort()
        return b"".join(piece for _, piece in self.pieces)
