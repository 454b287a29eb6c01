"""TLS client and server fingerprints: JA3, JA3S and JA4.

A fingerprint condenses what a hello offers into a short string that stays
the same for one client build whatever server it talks to, so an alert can
say *which software* sent data abroad. GREASE values (RFC 8701) are random
per connection and are left out everywhere.

* JA3 / JA3S (Salesforce, BSD-3-Clause): decimal fields joined by ``-`` and
  ``,``, hashed with MD5.
* JA4 (FoxIO, BSD-3-Clause; only the client fingerprint, as JA4.md
  specifies it): ``a_b_c`` with sorted, SHA-256-truncated lists.

SSLv2 CLIENT-HELLOs have no extensions and 3-byte cipher specs, so none of
these fingerprints is defined for them: the functions return None.
"""

from __future__ import annotations

import functools
import hashlib

from .tls import ClientHello, ServerHello
from .tls_names import GREASE_VALUES

__all__ = ["ja3", "ja3s", "ja4"]

_JA4_VERSIONS = {
    0x0304: "13",
    0x0303: "12",
    0x0302: "11",
    0x0301: "10",
    0x0300: "s3",
    0x0002: "s2",
    0xFEFF: "d1",
    0xFEFD: "d2",
    0xFEFC: "d3",
}
_JA4_EMPTY_HASH = "000000000000"
_JA4_TRANSPORTS = ("t", "q", "d")
_SNI, _ALPN = 0x0000, 0x0010


def _dec(values: tuple[int, ...]) -> str:
    return "-".join([str(v) for v in values if v not in GREASE_VALUES])


def _md5(text: str) -> str:
    return hashlib.md5(text.encode("ascii"), usedforsecurity=False).hexdigest()


def ja3(ch: ClientHello) -> tuple[str, str] | None:
    """``(ja3_full, md5)``: version,ciphers,extensions,groups,point formats."""
    if ch.sslv2:
        return None
    return _ja3(ch.legacy_version, ch.cipher_suites, ch.extensions, ch.groups,
                ch.ec_point_formats)


# One client build sends the same hello fields to every server: remembering the last few
# thousand fingerprints saves a third of the per-flow record cost on office traffic.
@functools.lru_cache(maxsize=4096)
def _ja3(version: int, ciphers: tuple[int, ...], extensions: tuple[int, ...],
         groups: tuple[int, ...], point_formats: tuple[int, ...]) -> tuple[str, str]:
    full = ",".join((str(version), _dec(ciphers), _dec(extensions), _dec(groups),
                     _dec(point_formats)))
    return full, _md5(full)


def ja3s(sh: ServerHello) -> tuple[str, str] | None:
    """``(ja3s_full, md5)``: legacy version, chosen cipher, extensions."""
    if sh.sslv2:
        return None
    full = f"{sh.legacy_version},{sh.cipher_suite},{_dec(sh.extensions)}"
    return full, _md5(full)


def _is_alnum(b: int) -> bool:
    return 0x30 <= b <= 0x39 or 0x41 <= b <= 0x5A or 0x61 <= b <= 0x7A


def ja4_alpn(first: bytes | None) -> str:
    """JA4's two ALPN characters: first and last byte, or hex digits if not alphanumeric.

    JA4.md: "If the first or last byte of the first ALPN is non-alphanumeric
    ... print the first and last characters of the hex representation"; so
    ``ba ad`` gives "bd". (FoxIO's own tools print "99" there; we follow the
    specification, as the corpus oracle does.)
    """
    if not first:
        return "00"
    if _is_alnum(first[0]) and _is_alnum(first[-1]):
        return chr(first[0]) + chr(first[-1])
    hexed = first.hex()
    return hexed[0] + hexed[-1]


def _ja4_version(ch: ClientHello) -> str:
    # ch.versions is supported_versions without GREASE, or (legacy_version,).
    # "Highest value" is numeric, so a 0x7fXX draft wins and prints "00".
    return _JA4_VERSIONS.get(max(ch.versions, default=ch.legacy_version), "00")


def _sha12(text: str) -> str:
    return hashlib.sha256(text.encode("ascii")).hexdigest()[:12]


def ja4(ch: ClientHello, transport: str = "t") -> tuple[str, str] | None:
    """``(ja4, ja4_r)`` for a ClientHello; transport 't' TCP, 'q' QUIC, 'd' DTLS."""
    if transport not in _JA4_TRANSPORTS:
        raise ValueError(f"JA4 transport must be one of {_JA4_TRANSPORTS}, not {transport!r}")
    if ch.sslv2:
        return None
    # JA4 sorts ciphers and extensions and drops GREASE, so the cache key does too: Chrome
    # shuffles its extensions and picks new GREASE values per connection, which made the
    # raw fields a new key every time (531 misses in 758 hellos on the bench capture; 15 now).
    grease = GREASE_VALUES
    return _ja4(transport, _ja4_version(ch),
                tuple(sorted([c for c in ch.cipher_suites if c not in grease])),
                tuple(sorted([e for e in ch.extensions if e not in grease])),
                tuple([s for s in ch.signature_algorithms if s not in grease]),
                ch.alpn_raw[0] if ch.alpn_raw else None)


@functools.lru_cache(maxsize=4096)
def _ja4(transport: str, version: str, ciphers: tuple[int, ...], exts: tuple[int, ...],
         sigs: tuple[int, ...], first_alpn: bytes | None) -> tuple[str, str]:
    """From GREASE-free fields, ciphers and extensions sorted, signature algorithms in order."""
    part_a = "%s%s%s%02d%02d%s" % (
        transport,
        version,
        "d" if _SNI in exts else "i",
        min(len(ciphers), 99),
        min(len(exts), 99),
        ja4_alpn(first_alpn),
    )
    cipher_list = ",".join(f"{c:04x}" for c in ciphers)
    ext_list = ",".join(f"{e:04x}" for e in exts if e not in (_SNI, _ALPN))
    sig_list = ",".join(f"{s:04x}" for s in sigs)
    ext_part = f"{ext_list}_{sig_list}" if sig_list else ext_list
    part_b = _sha12(cipher_list) if cipher_list else _JA4_EMPTY_HASH
    part_c = _sha12(ext_part) if ext_list else _JA4_EMPTY_HASH
    return f"{part_a}_{part_b}_{part_c}", f"{part_a}_{cipher_list}_{ext_part}"
