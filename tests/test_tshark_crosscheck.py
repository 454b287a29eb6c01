"""Cross-check the bundled sample capture with a real tshark run.

The corpus oracles were made once with tshark; this runs tshark now, on the
capture our own generator made, so the sample cannot teach us anything
tshark would not read the same way.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

from residency_monitor.records import FlowRecord
from residency_monitor.replay import replay
from residency_monitor.sample import SAMPLE_PATH
from residency_monitor.tls_names import version_name

TSHARK_PREFS = ["-o", "tcp.desegment_tcp_streams:TRUE", "-o", "tcp.reassemble_out_of_order:TRUE",
                "-o", "tls.desegment_ssl_records:TRUE"]


def _tshark(display_filter: str, *fields: str) -> list[list[str]]:
    exe = shutil.which("tshark")
    if exe is None:
        pytest.fail("tshark is not installed; `make test` installs it (Debian package tshark)")
    cmd = [exe, "-r", str(SAMPLE_PATH), "-n", *TSHARK_PREFS, "-Y", display_filter, "-T", "fields",
           "-E", "occurrence=f", "-E", "separator=\t"]
    for f in fields:
        cmd += ["-e", f]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return [line.split("\t") for line in out.splitlines()]


def _client(row: list[str]) -> tuple[str, int]:
    src = row[0] or row[1]
    return src, int(row[2])


@pytest.fixture(scope="module")
def ours() -> dict[tuple[str, int], FlowRecord]:
    recs: list[FlowRecord] = []
    replay([SAMPLE_PATH], recs.append)
    return {(r.client_ip, r.client_port): r for r in recs if r.app == "tls"}


def test_client_hellos_agree(ours):
    rows = _tshark("tls.handshake.type == 1", "ip.src", "ipv6.src", "tcp.srcport",
                   "tls.handshake.extensions_server_name", "tls.handshake.ja3")
    assert len(rows) == len(ours) == 9
    for row in rows:
        rec = ours[_client(row)]
        assert (rec.tls_sni, rec.tls_ja3) == (row[3], row[4])


def test_server_hellos_agree(ours):
    rows = _tshark("tls.handshake.type == 2", "ip.dst", "ipv6.dst", "tcp.dstport",
                   "tls.handshake.extensions.supported_version", "tls.handshake.version",
                   "tls.handshake.ciphersuite", "tls.handshake.ja3s")
    assert len(rows) == 9
    for row in rows:
        rec = ours[_client(row)]
        negotiated = int(row[3] or row[4], 16)
        assert rec.tls_version == version_name(negotiated)
        assert rec.tls_ja3s == row[6]
    assert sorted(r.tls_version for r in ours.values()) == (
        ["TLS 1.0", "TLS 1.2"] + ["TLS 1.3"] * 7)
