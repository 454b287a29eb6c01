"""Capture file readers: classic pcap (and its "modified" variant) and pcapng, plain or gzip.

A reader turns a file into ``(timestamp, linktype, frame, wire_length)`` tuples
and nothing more: no decoding and no wall clock. The capture's own timestamps
are the only time the rest of the monitor sees during a replay.

Damage policy: a file that is not a capture at all (or is empty) raises
:class:`CaptureError` when it is opened. A file that goes bad part-way (cut
short, an absurd length) yields every frame before the damage, describes the
damage in ``stats.damaged`` and stops. That is where tshark and libpcap give
up too, but the frames already read are kept.

Timestamps are float seconds. A double keeps 52 fraction bits, so for dates
between 2004 and 2038 the error is at most about 0.12 us (half of 2**-22 s):
microsecond timestamps survive (``round(ts * 1e6)`` gives them back exactly),
nanosecond detail does not. pcapng times come from one correctly rounded
integer division. Classic pcap times are ``sec + frac / 10**k``.

Speed: a plain file is read in 16 MiB chunks, and the record cut by a chunk
boundary is re-read with the next chunk instead of being joined to it (joining
copies the whole chunk into fresh memory, which cost more than the read).
Per frame the hot loops do one precompiled ``unpack_from``, one slice and one
tuple, and keep their counters in locals. ``stats`` is therefore exact once
iteration ends or the reader is closed; while iterating it trails by up to one
chunk.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import BinaryIO

__all__ = ["CHUNK", "MAX_RECORD", "CaptureError", "CaptureReader", "CaptureStats", "open_capture"]

CHUNK = 16 << 20  # bytes per read of a plain file: few system calls, modest memory
MAX_RECORD = 256 << 20  # a longer record or block is corruption, not a packet
_STREAM_CHUNK = 1 << 20  # reads from gzip or a pipe: the tail is copied, so keep chunks small
_ZIN = 1 << 20  # compressed bytes fed to zlib at a time

Frame = tuple[float, int, bytes, int]

# First four bytes on disk -> (byte order, fraction units per second, record header size).
_PCAP_MAGICS: dict[bytes, tuple[str, int, int]] = {
    b"\xd4\xc3\xb2\xa1": ("<", 1_000_000, 16),
    b"\xa1\xb2\xc3\xd4": (">", 1_000_000, 16),
    b"\x4d\x3c\xb2\xa1": ("<", 1_000_000_000, 16),
    b"\xa1\xb2\x3c\x4d": (">", 1_000_000_000, 16),
    # Kuznetzov's "modified" pcap: the record header adds ifindex, protocol, pkt_type, pad.
    b"\x34\xcd\xb2\xa1": ("<", 1_000_000, 24),
    b"\xa1\xb2\xcd\x34": (">", 1_000_000, 24),
}
_GZIP_MAGIC = b"\x1f\x8b"
_SHB_BYTES = b"\x0a\x0d\x0d\x0a"  # a palindrome: readable before the byte order is known
_BOM = {b"\x4d\x3c\x2b\x1a": "<", b"\x1a\x2b\x3c\x4d": ">"}

_SHB, _IDB, _PB, _SPB, _EPB = 0x0A0D0D0A, 1, 2, 3, 6
_MIN_BLOCK = {_SHB: 28, _IDB: 20, _PB: 32, _SPB: 16, _EPB: 32}
_OPT_TSRESOL, _OPT_TSOFFSET = 9, 14

# pcap header "link type and additional information": the low 16 bits are the link type;
# if bit 26 is set, the top 4 bits give the FCS length in 16-bit words.
_LT_MASK, _LT_FCS_PRESENT = 0xFFFF, 0x04000000


class CaptureError(Exception):
    """The file cannot be read as a capture at all; the message names the file and why."""


class _Damaged(Exception):
    """Internal: the stream went bad at absolute byte ``offset``; ends iteration, never escapes."""

    def __init__(self, offset: int, reason: str):
        super().__init__(reason)
        self.offset = offset


class _End(Exception):
    """Internal: the stream ended cleanly on a block boundary."""


@dataclass
class CaptureStats:
    """What a reader saw; complete once iteration has finished or the reader is closed."""

    frames: int = 0
    bytes_captured: int = 0
    truncated_frames: int = 0  # captured length < original length (snaplen)
    damaged: str | None = None  # where and why reading stopped early; None for a whole file
    skipped_blocks: int = 0  # pcapng blocks of types the reader does not use
    linktypes: dict[int, int] = field(default_factory=dict)  # frames per link type


class _PlainSource:
    """Reads an uncompressed file; an I/O error after open ends the stream like damage."""

    def __init__(self, raw: BinaryIO):
        self._raw = raw
        self.error: str | None = None

    def read(self, n: int) -> bytes:
        try:
            return self._raw.read(n)
        except OSError as exc:
            self.error = f"read error ({exc.strerror or exc})"
            return b""


class _GzipSource:
    """Inflates gzip members on the fly.

    zlib is used directly (not ``gzip.GzipFile``) so that a truncated or
    corrupt stream still hands over every byte inflated before the fault, and
    so output is bounded by what was asked for (no decompression bomb).
    """

    def __init__(self, raw: BinaryIO, first: bytes):
        self._raw = raw
        self._pending = first
        self._z = zlib.decompressobj(31)
        self.error: str | None = None

    def _raw_read(self) -> bytes:
        data, self._pending = self._pending, b""
        if data:
            return data
        try:
            return self._raw.read(_ZIN)
        except OSError as exc:
            self.error = f"read error ({exc.strerror or exc})"
            return b""

    def _next_input(self, parts: list[bytes]) -> bytes:
        """Compressed bytes to feed next; b"" at the end of the stream (clean or not)."""
        data = self._z.unconsumed_tail
        if data:
            return data
        if self._z.eof:  # a member ended; concatenated members follow (as in bgzip files)
            data = self._z.unused_data or self._raw_read()
            if data:
                self._z = zlib.decompressobj(31)
            return data
        data = self._raw_read()
        if not data:
            parts.append(self._z.flush())
            self.error = self.error or "gzip stream ends early"
        return data

    def read(self, n: int) -> bytes:
        parts: list[bytes] = []
        have = 0
        while have < n and self.error is None:
            data = self._next_input(parts)
            if not data:
                break
            try:
                piece = self._z.decompress(data, n - have)
            except zlib.error as exc:
                self.error = f"gzip data corrupt ({exc})"
                break
            parts.append(piece)
            have += len(piece)
        return b"".join(parts)


def _shb_header(buf: bytes, off: int) -> tuple[str, int]:
    """Byte order and length of the Section Header Block at ``off`` (16 bytes needed)."""
    order = _BOM.get(buf[off + 8 : off + 12])
    if order is None:
        raise ValueError(f"bad pcapng byte-order magic {buf[off + 8 : off + 12].hex()}")
    blen, major, minor = struct.unpack_from(order + "I4xHH", buf, off + 4)
    if blen % 4 or not _MIN_BLOCK[_SHB] <= blen <= MAX_RECORD:
        raise ValueError(f"implausible pcapng section header length {blen}")
    if major != 1:
        raise ValueError(f"unsupported pcapng version {major}.{minor}")
    return order, blen


def _options(buf: bytes, pos: int, end: int, order: str) -> Iterator[tuple[int, bytes]]:
    """pcapng options between ``pos`` and ``end``; a malformed tail is ignored, not fatal."""
    head = struct.Struct(order + "HH").unpack_from
    while pos + 4 <= end:
        code, length = head(buf, pos)
        if code == 0 or pos + 4 + length > end:
            return
        yield code, buf[pos + 4 : pos + 4 + length]
        pos += 4 + (length + 3 & ~3)


def _tsresol_divisor(value: int) -> int:
    """if_tsresol: high bit clear = 10**-n seconds per unit, set = 2**-n."""
    return 2 ** (value & 0x7F) if value & 0x80 else 10**value


def open_capture(path: str | os.PathLike[str]) -> CaptureReader:
    """Open a pcap or pcapng file (gzip-compressed or not); raises CaptureError if it is neither."""
    return CaptureReader(path)


class CaptureReader:
    """One open capture file; iterate it once for ``(ts, linktype, frame, wire_length)``.

    Iteration is single-pass like a file object. Attributes: ``path``,
    ``format`` ("pcap" or "pcapng"), ``compressed``, ``stats``; for classic
    pcap also ``linktype``, ``snaplen`` and ``fcs_len`` (bytes of FCS at the
    end of each frame when the header says so, else None).
    """

    def __init__(self, path: str | os.PathLike[str]):
        self.path = os.fsdecode(path)
        self.stats = CaptureStats()
        self.format = ""
        self.compressed = False
        self.linktype: int | None = None
        self.snaplen = 0
        self.fcs_len: int | None = None
        self._gen: Generator[Frame, None, None] | None = None
        self._closed = False
        try:
            self._raw: BinaryIO = open(path, "rb", buffering=0)  # noqa: SIM115 - closed by close()
        except OSError as exc:
            raise CaptureError(f"{self.path}: cannot open ({exc.strerror or exc})") from exc
        try:
            self._start()
        except BaseException:
            self._raw.close()
            raise

    # -- opening ---------------------------------------------------------------------------

    def _start(self) -> None:
        head = _PlainSource(self._raw).read(2)
        self.compressed = head == _GZIP_MAGIC
        self._src: _PlainSource | _GzipSource
        self._src = _GzipSource(self._raw, head) if self.compressed else _PlainSource(self._raw)
        self._buf, self._off, self._base = b"" if self.compressed else head, 0, 0
        self._seekable = not self.compressed and self._raw.seekable()
        if not self._fill(4):
            if not self._buf:
                raise CaptureError(f"{self.path}: {self._empty_reason()}")
            raise CaptureError(f"{self.path}: too short for a capture{self._why_short(4)}")
        magic = self._buf[:4]
        if magic in _PCAP_MAGICS:
            self._start_pcap(*_PCAP_MAGICS[magic])
        elif magic == _SHB_BYTES:
            self._start_pcapng()
        else:
            kind = "gzip-compressed data, but" if self.compressed else "file"
            raise CaptureError(
                f"{self.path}: {kind} not a pcap or pcapng capture "
                f"(starts with {self._buf[:8].hex(' ')})"
            )

    def _empty_reason(self) -> str:
        if not self.compressed:
            return "file is empty"
        return f"cannot decompress ({self._src.error})" if self._src.error else "empty after gzip"

    def _why_short(self, needed: int) -> str:
        got = f"{len(self._buf)} of {needed} bytes"
        return f" ({got}; {self._src.error})" if self._src.error else f" ({got})"

    def _start_pcap(self, order: str, units: int, rec_len: int) -> None:
        if not self._fill(24):
            raise CaptureError(f"{self.path}: pcap file header cut short{self._why_short(24)}")
        major, minor, snaplen, info = struct.unpack_from(order + "HH8xII", self._buf, 4)
        if major != 2:
            raise CaptureError(f"{self.path}: unsupported pcap version {major}.{minor}")
        self.format, self.snaplen = "pcap", snaplen
        self.linktype = info & _LT_MASK
        if info & _LT_FCS_PRESENT:
            self.fcs_len = 2 * (info >> 28)
        self._rec = struct.Struct(order + "IIII").unpack_from
        self._rec_len, self._units = rec_len, units
        self._off = 24

    def _start_pcapng(self) -> None:
        if not self._fill(16):
            raise CaptureError(f"{self.path}: pcapng section header cut short{self._why_short(16)}")
        try:
            order, blen = _shb_header(self._buf, 0)
        except ValueError as exc:
            raise CaptureError(f"{self.path}: {exc}") from exc
        if not self._fill(blen):
            raise CaptureError(
                f"{self.path}: pcapng section header cut short{self._why_short(blen)}"
            )
        if struct.unpack_from(order + "I", self._buf, blen - 4)[0] != blen:
            raise CaptureError(f"{self.path}: pcapng section header has mismatched lengths")
        self.format = "pcapng"
        self._last_ts = 0.0
        self._other_blocks = 1  # non-packet blocks so far, for block numbers in messages
        self._set_section(order)
        self._off = blen

    def _set_section(self, order: str) -> None:
        """A new section: its own byte order and a fresh interface table."""
        self._order = order
        self._epb = struct.Struct(order + "7I").unpack_from
        self._u32 = struct.Struct(order + "I").unpack_from
        self._ifaces: list[tuple[int, int, int]] = []  # (linktype, units per second, offset s)
        self._snaplens: list[int] = []
        self._counts: list[int] = []  # frames per interface not yet added to stats

    # -- life cycle ------------------------------------------------------------------------

    def __iter__(self) -> Iterator[Frame]:
        if self._gen is None:
            if self._closed:
                raise ValueError(f"{self.path}: reader is closed")
            self._gen = self._iter_pcap() if self.format == "pcap" else self._iter_pcapng()
        return self._gen

    def close(self) -> None:
        """Stop iteration (finishing the stats) and close the file."""
        self._closed = True
        if self._gen is not None:
            self._gen.close()
        self._raw.close()

    def __enter__(self) -> CaptureReader:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<CaptureReader {self.path!r} {self.format}{' gzip' if self.compressed else ''}>"

    # -- buffer ----------------------------------------------------------------------------

    def _fill(self, n: int) -> bool:
        """Make ``n`` bytes from ``_off`` available in ``_buf``; False if the stream ends first.

        A plain file is re-read from the start of the partial record rather than
        joining the old tail to the new chunk: copying a fresh 16 MiB buffer costs
        more than the whole read. The old chunk is dropped before the new one is
        allocated so the allocator can reuse its memory.
        """
        while (rest := len(self._buf) - self._off) < n:
            if self._seekable:
                pos = self._base + self._off
                self._buf, self._base, self._off = b"", pos, 0
                self._raw.seek(pos)
                self._buf = self._src.read(max(CHUNK, n))
                if len(self._buf) <= rest:
                    return False
                continue
            more = self._src.read(max(min(CHUNK, _STREAM_CHUNK), n - rest))
            if not more:
                return False
            self._base += self._off
            self._buf = self._buf[self._off :] + more
            self._off = 0
        return True

    def _cut_short(self, what: str, needed: int) -> _Damaged:
        """The damage record for a stream that ended while ``needed`` bytes of ``what`` were due."""
        rest = len(self._buf) - self._off
        cause = self._src.error or "file ends"
        if rest == 0:
            return _Damaged(self._base + self._off, f"not readable ({cause})")
        return _Damaged(
            self._base + self._off,
            f"cut short ({cause} mid-{what}: {rest} of {needed} bytes present)",
        )

    def _where(self, offset: int) -> str:
        return f"byte offset {offset}" + (" of the decompressed data" if self.compressed else "")

    # -- classic pcap ----------------------------------------------------------------------

    def _iter_pcap(self) -> Generator[Frame, None, None]:
        """The hot path: everything per frame stays in locals."""
        rec, hl, units = self._rec, self._rec_len, self._units
        lt = self.linktype or 0
        buf, off = self._buf, self._off
        start = off
        n = trunc = 0
        try:
            while True:
                end = len(buf)
                lim = end - hl
                while off <= lim:
                    sec, frac, caplen, wirelen = rec(buf, off)
                    p = off + hl
                    q = p + caplen
                    if q > end:
                        break
                    off = q
                    n += 1
                    if caplen < wirelen:
                        trunc += 1
                    yield sec + frac / units, lt, buf[p:q], wirelen
                self._count_pcap(lt, n, trunc, off - start - hl * n)
                n = trunc = 0
                self._buf, self._off = buf, off
                buf = b""  # drop our reference so the chunk can be freed before the next read
                if not self._refill_pcap():
                    return
                buf, off = self._buf, self._off
                start = off
        except _Damaged as exc:
            self._set_damaged("record", self.stats.frames + 1, exc)
        finally:
            self._count_pcap(lt, n, trunc, off - start - hl * n)
            self._raw.close()

    def _refill_pcap(self) -> bool:
        """Read on so the next record fits; False at a clean end, _Damaged at a bad one."""
        hl, rest = self._rec_len, len(self._buf) - self._off
        needed = hl
        if rest >= hl:
            caplen = self._rec(self._buf, self._off)[2]
            if caplen > MAX_RECORD:
                raise _Damaged(
                    self._base + self._off,
                    f"has an implausible captured length of {caplen} bytes (limit {MAX_RECORD})",
                )
            needed = hl + caplen
        if self._fill(needed):
            return True
        if len(self._buf) == self._off and self._src.error is None:
            return False
        got = len(self._buf) - self._off
        raise self._cut_short("record" if got >= hl else "record header", needed)

    def _count_pcap(self, lt: int, n: int, trunc: int, nbytes: int) -> None:
        if n:
            st = self.stats
            st.frames += n
            st.truncated_frames += trunc
            st.bytes_captured += nbytes
            st.linktypes[lt] = st.linktypes.get(lt, 0) + n

    def _set_damaged(self, unit: str, number: int, exc: _Damaged) -> None:
        self.stats.damaged = f"{self.path}: {unit} {number} at {self._where(exc.offset)} {exc}"

    # -- pcapng ----------------------------------------------------------------------------

    def _iter_pcapng(self) -> Generator[Frame, None, None]:
        """Enhanced Packet Blocks that lie wholly in the buffer take the inline fast path;
        every other block (and an EPB straddling a chunk) goes through ``_next_block``."""
        nbytes = trunc = 0
        try:
            while True:
                buf, off, ts = self._buf, self._off, self._last_ts
                epb, u32, ifaces, counts = self._epb, self._u32, self._ifaces, self._counts
                nif, end = len(ifaces), len(buf)
                lim = end - 28
                while off <= lim:
                    btype, blen, ifid, hi, lo, caplen, wirelen = epb(buf, off)
                    nxt = off + blen
                    if (
                        btype != 6
                        or nxt > end
                        or caplen + 32 > blen
                        or blen & 3
                        or ifid >= nif
                        or u32(buf, nxt - 4)[0] != blen
                    ):
                        break
                    lt, units, tsoff = ifaces[ifid]
                    counts[ifid] += 1
                    nbytes += caplen
                    if caplen < wirelen:
                        trunc += 1
                    p = off + 28
                    off = nxt
                    ts = (hi << 32 | lo) / units + tsoff
                    yield ts, lt, buf[p : p + caplen], wirelen
                self._off, self._last_ts = off, ts
                self._count_pcapng(nbytes, trunc)
                nbytes = trunc = 0
                buf = b""  # as in _iter_pcap: free the chunk before a refill
                frame = self._next_block()
                if frame is not None:
                    yield frame
        except _Damaged as exc:
            self._set_damaged("block", self._block_number(), exc)
        except _End:
            pass
        finally:
            self._count_pcapng(nbytes, trunc)
            self._raw.close()

    def _count_pcapng(self, nbytes: int, trunc: int) -> None:
        st = self.stats
        st.bytes_captured += nbytes
        st.truncated_frames += trunc
        for i, n in enumerate(self._counts):
            if n:
                lt = self._ifaces[i][0]
                st.frames += n
                st.linktypes[lt] = st.linktypes.get(lt, 0) + n
                self._counts[i] = 0

    def _block_number(self) -> int:
        return self.stats.frames + sum(self._counts) + self._other_blocks + 1

    def _next_block(self) -> Frame | None:
        """Consume one block of any type; a frame if it carried one."""
        if not self._fill(8):
            if len(self._buf) == self._off and self._src.error is None:
                raise _End
            raise self._cut_short("block header", 8)
        off = self._off
        if self._buf[off : off + 4] == _SHB_BYTES:
            self._new_section()
            return None
        btype, blen = struct.unpack_from(self._order + "II", self._buf, off)
        if blen % 4 or not _MIN_BLOCK.get(btype, 12) <= blen <= MAX_RECORD:
            raise _Damaged(self._base + off, f"(type {btype:#x}) has a bogus length of {blen}")
        if not self._fill(blen):
            raise self._cut_short("block", blen)
        buf, off = self._buf, self._off
        if self._u32(buf, off + blen - 4)[0] != blen:
            raise _Damaged(self._base + off, f"(type {btype:#x}) has mismatched lengths")
        handler = self._handlers.get(btype)
        frame = handler(self, buf, off, blen) if handler else None
        if frame is None:
            self._other_blocks += 1
            if handler is None:
                self.stats.skipped_blocks += 1
        self._off = off + blen
        return frame

    def _new_section(self) -> None:
        if not self._fill(16):
            raise self._cut_short("section header", 16)
        try:
            order, blen = _shb_header(self._buf, self._off)
        except ValueError as exc:
            raise _Damaged(
                self._base + self._off, f"is an unusable section header ({exc})"
            ) from None
        if not self._fill(blen):
            raise self._cut_short("section header", blen)
        if struct.unpack_from(order + "I", self._buf, self._off + blen - 4)[0] != blen:
            raise _Damaged(self._base + self._off, "is a section header with mismatched lengths")
        self._count_pcapng(0, 0)
        self._set_section(order)
        self._other_blocks += 1
        self._off += blen

    def _idb(self, buf: bytes, off: int, blen: int) -> None:
        lt, snaplen = struct.unpack_from(self._order + "H2xI", buf, off + 8)
        units, tsoff = 1_000_000, 0
        for code, value in _options(buf, off + 16, off + blen - 4, self._order):
            if code == _OPT_TSRESOL and len(value) == 1:
                units = _tsresol_divisor(value[0])
            elif code == _OPT_TSOFFSET and len(value) == 8:
                tsoff = struct.unpack(self._order + "q", value)[0]
        self._ifaces.append((lt, units, tsoff))
        self._snaplens.append(snaplen)
        self._counts.append(0)

    def _epb_block(self, buf: bytes, off: int, blen: int) -> Frame:
        _, _, ifid, hi, lo, caplen, wirelen = self._epb(buf, off)
        if caplen + 32 > blen:
            raise _Damaged(self._base + off, f"has a captured length {caplen} beyond its block")
        return self._frame(off, ifid, hi << 32 | lo, buf[off + 28 : off + 28 + caplen], wirelen)

    def _pb_block(self, buf: bytes, off: int, blen: int) -> Frame:
        """Obsolete Packet Block (type 2): a 16-bit interface id and a drop counter."""
        ifid, hi, lo, caplen, wirelen = struct.unpack_from(self._order + "H2xIIII", buf, off + 8)
        if caplen + 32 > blen:
            raise _Damaged(self._base + off, f"has a captured length {caplen} beyond its block")
        return self._frame(off, ifid, hi << 32 | lo, buf[off + 28 : off + 28 + caplen], wirelen)

    def _spb_block(self, buf: bytes, off: int, blen: int) -> Frame:
        """Simple Packet Block: interface 0, no timestamp, captured length implied."""
        wirelen = self._u32(buf, off + 8)[0]
        caplen = min(wirelen, blen - 16)
        if self._snaplens and self._snaplens[0]:
            caplen = min(caplen, self._snaplens[0])
        return self._frame(off, 0, None, buf[off + 12 : off + 12 + caplen], wirelen)

    def _frame(self, off: int, ifid: int, stamp: int | None, data: bytes, wirelen: int) -> Frame:
        if ifid >= len(self._ifaces):
            raise _Damaged(
                self._base + off,
                f"refers to interface {ifid} but its section declares {len(self._ifaces)}",
            )
        lt, units, tsoff = self._ifaces[ifid]
        if stamp is not None:
            self._last_ts = stamp / units + tsoff
        self._counts[ifid] += 1
        self.stats.bytes_captured += len(data)
        if len(data) < wirelen:
            self.stats.truncated_frames += 1
        return self._last_ts, lt, data, wirelen

    _handlers = {_IDB: _idb, _EPB: _epb_block, _PB: _pb_block, _SPB: _spb_block}
