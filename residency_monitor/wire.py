"""The parser contract shared by every protocol decoder.

A parser takes bytes and returns plain data. On malformed input the only
exception it may raise is :class:`ParseError`; ``None`` means "not enough
bytes yet". :class:`Cursor` reads through bounds checks so that
``struct.error`` and ``IndexError`` never escape a parser.
"""

from __future__ import annotations


class ParseError(ValueError):
    """Input that cannot be what the parser expects (never 'need more data')."""


class NeedMore(Exception):
    """Raised inside a parser when the buffer ends early; callers turn it into None."""


class Cursor:
    """A bounds-checked reader over ``buf[start:end]``.

    Reading past ``end`` raises :class:`NeedMore` when the data may simply
    not have arrived yet, or :class:`ParseError` for a length field that
    overruns an enclosing structure (use :meth:`sub`, which knows the
    difference via ``strict``).
    """

    __slots__ = ("buf", "pos", "end", "strict")

    def __init__(self, buf: bytes, start: int = 0, end: int | None = None, strict: bool = False):
        self.buf = buf
        self.pos = start
        self.end = len(buf) if end is None else end
        self.strict = strict

    def _need(self, n: int) -> int:
        p = self.pos
        if n < 0 or p + n > self.end:
            if self.strict:
                raise ParseError(f"field of {n} bytes overruns its container at offset {p}")
            raise NeedMore()
        self.pos = p + n
        return p

    def remaining(self) -> int:
        return self.end - self.pos

    # The readers below repeat _need's bounds check inline: they run a few hundred times
    # per handshake, and the extra call was a fifth of a ClientHello parse (measured).
    def _short(self, n: int) -> Exception:
        if self.strict:
            return ParseError(f"field of {n} bytes overruns its container at offset {self.pos}")
        return NeedMore()

    def u8(self) -> int:
        p = self.pos
        if p >= self.end:
            raise self._short(1)
        self.pos = p + 1
        return self.buf[p]

    def u16(self) -> int:
        p = self.pos
        if p + 2 > self.end:
            raise self._short(2)
        self.pos = p + 2
        b = self.buf
        return b[p] << 8 | b[p + 1]

    def u24(self) -> int:
        p = self._need(3)
        b = self.buf
        return b[p] << 16 | b[p + 1] << 8 | b[p + 2]

    def u32(self) -> int:
        p = self._need(4)
        return int.from_bytes(self.buf[p:p + 4], "big")

    def take(self, n: int) -> bytes:
        p = self.pos
        q = p + n
        if n < 0 or q > self.end:
            raise self._short(n)
        self.pos = q
        return bytes(self.buf[p:q])

    def skip(self, n: int) -> None:
        self._need(n)

    def sub(self, n: int) -> Cursor:
        """A cursor over the next ``n`` bytes; inside it every overrun is a ParseError."""
        p = self._need(n)
        return Cursor(self.buf, p, p + n, strict=True)

    def vec8(self) -> Cursor:
        p = self.pos
        if p >= self.end:
            raise self._short(1)
        q = p + 1 + self.buf[p]
        if q > self.end:
            self.pos = p + 1
            raise self._short(q - p - 1)
        self.pos = q
        return Cursor(self.buf, p + 1, q, True)

    def vec16(self) -> Cursor:
        p = self.pos
        if p + 2 > self.end:
            raise self._short(2)
        b = self.buf
        q = p + 2 + (b[p] << 8 | b[p + 1])
        if q > self.end:
            self.pos = p + 2
            raise self._short(q - p - 2)
        self.pos = q
        return Cursor(b, p + 2, q, True)

    def vec24(self) -> Cursor:
        return self.sub(self.u24())
