"""JA3, JA3S and JA4: pinned against tshark, FoxIO's reference outputs and the JA4.md examples.

Fingerprint implementations drift (GREASE handling, ALPN edge cases), so the
golden values here are the guard: every TLS-over-TCP connection of the corpus
must give tshark's JA3/JA3S and the oracle's JA4, and every TCP ClientHello
in FoxIO's reference files must give FoxIO's JA4 (with one documented
exception).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import CORPUS, oracle
from test_tls import (
    GOLDEN,
    alpn_ext,
    client_hello_body,
    ext,
    final_server_hello,
    handshake,
    sample_client_hello,
    sample_server_hello,
    sigalgs_ext,
    sni_ext,
    sslv2_client_hello,
    tcp_directions,
    versions_ext,
)

from residency_monitor.fingerprint import ja3, ja3s, ja4, ja4_alpn
from residency_monitor.tls import (
    ClientHello,
    ServerHello,
    parse_client_hello,
    parse_server_hello,
    read_handshake_messages,
)


def j3(ch: ClientHello) -> tuple[str, str]:
    got = ja3(ch)
    assert got is not None
    return got


def j3s(sh: ServerHello) -> tuple[str, str]:
    got = ja3s(sh)
    assert got is not None
    return got


def j4(ch: ClientHello, transport: str = "t") -> tuple[str, str]:
    got = ja4(ch, transport)
    assert got is not None
    return got

# ---------------------------------------------------------------------------
# Golden: tshark's JA3/JA3S and the oracle's JA4 for every corpus connection.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(("capture", "index"), GOLDEN)
def test_golden_fingerprints_match_oracle(corpus_dir: Path, capture: str, index: int) -> None:
    conn = oracle(corpus_dir / capture)["tls_connections"][index]
    hs = handshake(corpus_dir / capture, conn)
    chs, shs = hs.client_hellos, hs.server_hellos
    if chs:
        got_ja3, got_ja4 = ja3(chs[0]), ja4(chs[0], "t")
        assert got_ja3 == (None if conn["ja3"] is None else (conn["ja3_full"], conn["ja3"]))
        assert got_ja4 == (None if conn["ja4"] is None else (conn["ja4"], conn["ja4_r"]))
    if shs:
        got_ja3s = ja3s(final_server_hello(shs))
        assert got_ja3s == (None if conn["ja3s"] is None else (conn["ja3s_full"], conn["ja3s"]))


def _reference_entries() -> list:
    out: list = []
    for ref in sorted(CORPUS.glob("*.ja4-reference.json")) if CORPUS.is_dir() else []:
        entries = json.loads(ref.read_text())["entries"]
        out += [(ref.name, i) for i in range(len(entries))]
    return out or [pytest.param("", 0, id="no-corpus")]


# FoxIO's tools print "99" for a first ALPN of bytes ba ad; JA4.md says to
# print the first and last hex digits ("bd"). We follow the specification
# (see corpus README, "Cross-checks done").
SPEC_OVER_FOXIO = {("ja4-tls-non-ascii-alpn.pcapng", 1): ("t13d151699", "t13d1516bd")}


@pytest.mark.parametrize(("reference", "index"), _reference_entries())
def test_ja4_matches_foxio_reference(corpus_dir: Path, reference: str, index: int) -> None:
    entry = json.loads((corpus_dir / reference).read_text())["entries"][index]
    capture = corpus_dir / reference.removesuffix(".ja4-reference.json")
    key = (entry["src"], int(entry["srcport"]), entry["dst"], int(entry["dstport"]))
    expected = {int(k.split(".")[1]): entry[k] for k in entry if k.startswith("JA4.")}
    msgs, _ = read_handshake_messages(tcp_directions(capture)[key].data)
    hellos = [parse_client_hello(b) for t, b in msgs if t == 1]
    assert len(hellos) >= len(expected) > 0
    for n, want in expected.items():
        got, got_r = j4(hellos[n - 1])
        fix = SPEC_OVER_FOXIO.get((capture.name, n))
        if fix:
            want = want.replace(*fix)
            assert got.startswith(fix[1])
        assert got == want
        want_r = entry[f"JA4_r.{n}"]
        assert got_r == (want_r.replace(*fix) if fix else want_r)


def test_reference_files_cover_enough_hellos(corpus_dir: Path) -> None:
    count = 0
    for ref in corpus_dir.glob("*.ja4-reference.json"):
        for entry in json.loads(ref.read_text())["entries"]:
            count += sum(1 for k in entry if k.startswith("JA4."))
    assert count >= 76


# ---------------------------------------------------------------------------
# JA4.md's own worked example and rules.
# ---------------------------------------------------------------------------

SPEC_CIPHERS = (0x1301, 0x1302, 0x1303, 0xC02B, 0xC02F, 0xC02C, 0xC030, 0xCCA9, 0xCCA8,
                0xC013, 0xC014, 0x009C, 0x009D, 0x002F, 0x0035)
SPEC_EXTS = (0x001B, 0x0000, 0x0033, 0x0010, 0x4469, 0x0017, 0x002D, 0x000D, 0x0005,
             0x0023, 0x0012, 0x002B, 0xFF01, 0x000B, 0x000A, 0x0015)
SPEC_SIGS = (0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601)


def spec_hello(**changes: object) -> ClientHello:
    base = ClientHello(
        legacy_version=0x0303, versions=(0x0304, 0x0303), sni="example.com", alpn=("h2",),
        alpn_raw=(b"h2",), cipher_suites=SPEC_CIPHERS, extensions=SPEC_EXTS, groups=(29, 23),
        ec_point_formats=(0,), signature_algorithms=SPEC_SIGS, key_share_groups=(29,),
        ech=False, sslv2=False,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def test_ja4_spec_example() -> None:
    fp, raw = j4(spec_hello())
    assert fp == "t13d1516h2_8daaf6152771_e5627efa2ab1"
    assert raw == (
        "t13d1516h2_002f,0035,009c,009d,1301,1302,1303,c013,c014,c02b,c02c,c02f,c030,cca8,cca9"
        "_0005,000a,000b,000d,0012,0015,0017,001b,0023,002b,002d,0033,4469,ff01"
        "_0403,0804,0401,0503,0805,0501,0806,0601"
    )


def test_ja4_without_signature_algorithms_has_no_trailing_underscore() -> None:
    fp, raw = j4(spec_hello(signature_algorithms=()))
    assert fp.endswith("_6d807ffa2a79") and raw.endswith("4469,ff01")


def test_ja4_ignores_grease_everywhere() -> None:
    greased = spec_hello(
        cipher_suites=(0x0A0A,) + SPEC_CIPHERS,
        extensions=(0x1A1A,) + SPEC_EXTS + (0xFAFA,),
        signature_algorithms=SPEC_SIGS + (0x2A2A,),
    )
    assert j4(greased) == j4(spec_hello())


@pytest.mark.parametrize(
    ("versions", "code"),
    [((0x0304,), "13"), ((0x0303,), "12"), ((0x0302,), "11"), ((0x0301,), "10"),
     ((0x0300,), "s3"), ((0x0002,), "s2"), ((0xFEFD,), "d2"), ((0xFEFF,), "d1"),
     ((0xFEFC,), "d3"), ((0x7F17, 0x0303), "00"), ((0x0305,), "00"), ((0x0303, 0x0304), "13")],
)
def test_ja4_version(versions: tuple[int, ...], code: str) -> None:
    assert j4(spec_hello(versions=versions))[0][1:3] == code


def test_ja4_version_from_real_supported_versions_ignoring_grease() -> None:
    ch = parse_client_hello(client_hello_body([versions_ext(0xFAFA, 0x0304, 0x0303)]))
    assert j4(ch)[0].startswith("t13i")


@pytest.mark.parametrize(
    ("alpn", "chars"),
    [
        (None, "00"), (b"", "00"), (b"h2", "h2"), (b"http/1.1", "h1"), (b"h", "hh"),
        # The five examples of JA4.md.
        (b"\xab", "ab"), (b"\xab\xcd", "ad"), (b"\x30\xab", "3b"),
        (b"\x30\x31\xab\xcd", "3d"), (b"\x30\xab\xcd\x31", "01"),
        (b"\xba\xad", "bd"),
    ],
)
def test_ja4_alpn_characters(alpn: bytes | None, chars: str) -> None:
    assert ja4_alpn(alpn) == chars


def test_ja4_sni_flag_and_transport() -> None:
    no_sni = spec_hello(extensions=tuple(e for e in SPEC_EXTS if e != 0), sni=None)
    assert j4(no_sni, "q")[0].startswith("q13i1515h2")
    assert j4(spec_hello(), "d")[0].startswith("d13d")
    with pytest.raises(ValueError):
        j4(spec_hello(), "x")


def test_ja4_counts_are_capped_at_99() -> None:
    many = spec_hello(cipher_suites=tuple(range(1, 150)), extensions=tuple(range(100, 250)))
    assert j4(many)[0][3:8] == "i9999"


def test_ja4_empty_lists_give_zero_hashes() -> None:
    bare = spec_hello(cipher_suites=(), extensions=(0x0000, 0x0010), signature_algorithms=())
    fp, raw = j4(bare)
    assert fp == "t13d0002h2_000000000000_000000000000"
    assert raw == "t13d0002h2__"


def test_ja3_of_hand_made_hello() -> None:
    ch = parse_client_hello(sample_client_hello())
    full, digest = j3(ch)
    # GREASE gone from ciphers, extensions and groups; wire order kept.
    assert full == "771,4865-4866-49195,0-16-43-10-11-13-51-65037,4588-29,0"
    assert len(digest) == 32 and int(digest, 16) >= 0


def test_ja3_of_hello_without_extensions_has_empty_fields() -> None:
    ch = parse_client_hello(client_hello_body(None, suites=(0x2F, 0x35), version=0x0301))
    assert j3(ch)[0] == "769,47-53,,,"


def test_ja3s_of_hand_made_server_hello() -> None:
    sh = parse_server_hello(sample_server_hello())
    assert j3s(sh)[0] == "771,4865,43-51"


def test_sslv2_has_no_fingerprints() -> None:
    ch = parse_client_hello(sslv2_client_hello())
    assert ja3(ch) is None and ja4(ch) is None


def test_fingerprint_sni_flag_uses_extension_presence_not_validity() -> None:
    # JA4 says "d" when the SNI extension exists, even if the name is unusable.
    ch = parse_client_hello(client_hello_body([sni_ext(b"bad name"), alpn_ext(b"h2"),
                                               sigalgs_ext(0x0403), ext(0x0017, b"")]))
    assert ch.sni is None and j4(ch)[0].startswith("t12d0204h2")
