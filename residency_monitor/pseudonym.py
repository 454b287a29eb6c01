"""Pseudonyms for internal addresses: a keyed hash, so the audit log names no employee.

An internal address (one inside the configured internal networks, i.e. a
person's machine) becomes ``anon-`` + the first 16 hex digits of
HMAC-SHA256(key, packed address bytes). The same address always gives the
same pseudonym under one key, so an investigation can still follow one
machine, and whoever holds the key can compute the pseudonym of a given
address (``residency-monitor audit pseudonym``) to search the log. Without
the key a pseudonym cannot be reversed by trying the few million private
addresses, which a plain hash would allow. External (server) addresses are
not personal data of the site and stay as they are: the evidence needs them.

The key is a file the operator creates (at least 16 bytes, not readable by
others); it is never logged, and a key that is missing, short or world
readable refuses the start with the file's name.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .networks import NetworkSet

PREFIX = "anon-"
HEX_DIGITS = 16          # 64 bits: no collision in any office's address space
MIN_KEY_BYTES = 16


class KeyFileError(ValueError):
    """The key file cannot be used; the message starts with its path."""


def load_key(path: str | os.PathLike[str]) -> bytes:
    """The key file's bytes (a trailing newline excluded): must exist, be long and private.

    World-readable keys are refused: anyone on the gateway could then undo
    the pseudonyms. The newline is dropped so that ``openssl rand -hex 32 >
    key`` and an editor that appends one give the same key.
    """
    p = Path(path)
    try:
        st = p.stat()
        if not stat.S_ISREG(st.st_mode):
            raise KeyFileError(f"{p}: the pseudonymisation key must be a regular file")
        data = p.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"{p}: cannot read the pseudonymisation key: "
                           f"{exc.strerror or exc}") from None
    if st.st_mode & stat.S_IROTH:
        raise KeyFileError(f"{p}: the pseudonymisation key is readable by everyone "
                           f"(mode {stat.S_IMODE(st.st_mode):04o}); chmod o-r it")
    key = data[:-2] if data.endswith(b"\r\n") else data[:-1] if data.endswith(b"\n") else data
    if len(key) < MIN_KEY_BYTES:
        raise KeyFileError(f"{p}: the pseudonymisation key has {len(key)} bytes; "
                           f"at least {MIN_KEY_BYTES} are needed "
                           f"(e.g. head -c 32 /dev/urandom > {p.name})")
    return key


def pseudonym(key: bytes, address: str) -> str:
    """``anon-`` + 16 hex digits of HMAC-SHA256(key, the address's packed bytes).

    Packed bytes, not text, so ``::ffff:0:a00:1``-style spellings of one
    IPv6 address give one pseudonym. Raises ValueError for a non-address.
    """
    packed = ipaddress.ip_address(address).packed
    return PREFIX + hmac.new(key, packed, hashlib.sha256).hexdigest()[:HEX_DIGITS]


class Pseudonymizer:
    """Replaces internal addresses in flow-record dicts and alert annotations.

    Results are cached per address: a busy office has a few hundred
    internal addresses and each costs one HMAC once.
    """

    def __init__(self, key: bytes, internal: NetworkSet | Iterable[str]):
        if len(key) < MIN_KEY_BYTES:
            raise ValueError(f"a pseudonymisation key needs at least {MIN_KEY_BYTES} bytes")
        self._key = key
        self._internal = internal if isinstance(internal, NetworkSet) else NetworkSet(internal)
        self._cache: dict[str, str] = {}

    def __repr__(self) -> str:   # never show the key, not even in a traceback
        return "Pseudonymizer(key=<hidden>)"

    def address(self, address: str) -> str:
        """The pseudonym of an internal address; any other address (or text) unchanged."""
        hit = self._cache.get(address)
        if hit is not None:
            return hit
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return address
        out = pseudonym(self._key, address) if ip.packed in self._internal else address
        if len(self._cache) < 100_000:
            self._cache[address] = out
        return out

    def record(self, fields: dict[str, Any]) -> dict[str, Any]:
        """A flow-record dict with its internal endpoints replaced (a new dict)."""
        out = dict(fields)
        for name in ("client_ip", "server_ip"):
            value = out.get(name)
            if isinstance(value, str):
                out[name] = self.address(value)
        return out

    def endpoint(self, text: str) -> str:
        """``ADDR:PORT`` or ``[ADDR]:PORT`` or ``ADDR`` with an internal address replaced."""
        if text.startswith("["):
            host, sep, rest = text[1:].partition("]")
            return f"[{self.address(host)}]{rest}" if sep else text
        if text.count(":") == 1:
            host, _, port = text.partition(":")
            return f"{self.address(host)}:{port}"
        return self.address(text)
