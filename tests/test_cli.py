"""The ``residency-monitor replay`` command: formats, exit codes and messages on bad input."""

from __future__ import annotations

import gzip
import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import CORPUS

from residency_monitor.cli import main

DOCUMENTED_FIELDS = {
    "ts_start", "ts_end", "final", "end_reason", "transport", "client_ip", "client_port",
    "server_ip", "server_port", "direction", "vlan", "packets_out", "packets_in", "bytes_out",
    "bytes_in", "app", "tls_version", "tls_client_versions", "tls_sni", "tls_alpn",
    "tls_alpn_chosen", "tls_cipher", "tls_ech", "tls_ja3", "tls_ja3s", "tls_ja4",
}

KYBER = CORPUS / "zeek-chrome-1250-tls-x25519-kyber.pcap"


def _run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def _pcap(path: Path, linktype: int, frames: list[bytes]) -> Path:
    out = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, linktype)
    for i, f in enumerate(frames):
        out += struct.pack("<IIII", 1700000000 + i, 0, len(f), len(f)) + f
    path.write_bytes(out)
    return path


def test_jsonl_records_have_every_documented_field(corpus_dir):
    res = _run("replay", "-q", str(KYBER))
    assert res.exit_code == 0
    lines = [json.loads(line) for line in res.stdout.splitlines()]
    assert len(lines) == 1
    rec = lines[0]
    assert set(rec) >= DOCUMENTED_FIELDS
    assert rec["tls_sni"] == "lh3.google.com" and rec["tls_version"] == "TLS 1.3"
    assert rec["tls_client_versions"] == ["TLS 1.3", "TLS 1.2"]


def test_output_file_and_summary(corpus_dir, tmp_path):
    out = tmp_path / "flows.jsonl"
    res = _run("replay", "-o", str(out), str(KYBER))
    assert res.exit_code == 0 and res.stdout == ""
    assert "15 packets, 1 flow records" in res.stderr
    assert json.loads(out.read_text())["server_port"] == 443


def test_table_format_is_for_people(corpus_dir):
    res = _run("replay", "-q", "--format", "table", str(KYBER))
    assert res.exit_code == 0
    header, row, total, _blank, *summary = res.stdout.splitlines()
    assert header.split()[:3] == ["start", "dir", "proto"]
    assert "lh3.google.com" in row and "142.250.200.14:443" in row and "1.3" in row
    assert total == "1 flows"
    assert summary[0] == "residency summary (policy macau-pdpa)"


def test_gzip_capture_is_read(corpus_dir, tmp_path):
    gz = tmp_path / "kyber.pcap.gz"
    gz.write_bytes(gzip.compress(KYBER.read_bytes()))
    res = _run("replay", "-q", str(gz))
    assert res.exit_code == 0 and json.loads(res.stdout)["tls_sni"] == "lh3.google.com"


def test_file_cut_mid_record_warns_and_exits_zero(corpus_dir, tmp_path):
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(KYBER.read_bytes()[:-10])  # inside the last (15th) record
    res = _run("replay", str(cut))
    assert res.exit_code == 0
    assert "warning:" in res.stderr and "cut.pcap" in res.stderr
    assert "14 packets" in res.stderr
    assert json.loads(res.stdout)["tls_sni"] == "lh3.google.com"


def test_not_a_capture_exits_3_naming_the_file(tmp_path):
    junk = tmp_path / "notes.txt"
    junk.write_text("hello, this is not a capture\n")
    res = _run("replay", str(junk))
    assert res.exit_code == 3
    assert "notes.txt" in res.stderr and res.stdout == ""


def test_empty_file_exits_3(tmp_path):
    empty = tmp_path / "empty.pcap"
    empty.write_bytes(b"")
    res = _run("replay", str(empty))
    assert res.exit_code == 3 and "empty.pcap" in res.stderr


def test_missing_file_exits_3(tmp_path):
    res = _run("replay", str(tmp_path / "nope.pcap"))
    assert res.exit_code == 3 and "nope.pcap" in res.stderr


def test_one_bad_input_among_good_ones_exits_4(corpus_dir, tmp_path):
    junk = tmp_path / "junk.pcap"
    junk.write_bytes(b"\x00" * 100)
    res = _run("replay", "-q", str(KYBER), str(junk))
    assert res.exit_code == 4
    assert "junk.pcap" in res.stderr
    assert json.loads(res.stdout)["tls_sni"] == "lh3.google.com"


def test_unknown_link_type_is_reported_once(tmp_path):
    cap = _pcap(tmp_path / "usb.pcap", 189, [b"\x01" * 40] * 5)
    res = _run("replay", str(cap))
    assert res.exit_code == 0
    warnings = [line for line in res.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1
    assert "usb.pcap" in warnings[0] and "5 frame(s)" in warnings[0] and "189" in warnings[0]


def test_snaplen_truncated_corpus_capture(corpus_dir):
    res = _run("replay", str(CORPUS / "zeek-truncated-header.pcap"))
    assert res.exit_code == 0
    assert "24 packets" in res.stderr


def test_bad_internal_network_is_a_usage_error(corpus_dir):
    res = CliRunner().invoke(main, ["replay", "--internal", "10.0.0.0/33", str(KYBER)])
    assert res.exit_code == 2 and "--internal" in res.output


def test_several_files_are_one_timeline(corpus_dir, tmp_path):
    """A capture split in two files (as rotated captures are) still gives one flow."""
    data = KYBER.read_bytes()
    hdr, body = data[:24], data[24:]
    offsets, off = [], 0
    while off < len(body):
        offsets.append(off)
        off += 16 + struct.unpack_from("<I", body, off + 8)[0]
    half = offsets[len(offsets) // 2]
    (tmp_path / "a.pcap").write_bytes(hdr + body[:half])
    (tmp_path / "b.pcap").write_bytes(hdr + body[half:])
    res = _run("replay", "-q", str(tmp_path / "a.pcap"), str(tmp_path / "b.pcap"))
    recs = [json.loads(line) for line in res.stdout.splitlines()]
    assert len(recs) == 1 and recs[0]["packets_out"] + recs[0]["packets_in"] == 15


def test_console_script_is_installed():
    beside = Path(sys.executable).parent / "residency-monitor"   # inside a virtualenv
    exe = str(beside) if beside.exists() else shutil.which("residency-monitor")
    assert exe, "the residency-monitor console script is not installed (pip install -e .)"
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("residency-monitor, version")


@pytest.mark.parametrize("fmt", ["jsonl", "table"])
def test_default_replays_the_bundled_sample(fmt):
    res = _run("replay", "-q", "--format", fmt)
    assert res.exit_code == 0
    assert "portal" in res.stdout or "TLS" in res.stdout or "tls" in res.stdout


def test_python_dash_m_entry_point():
    out = subprocess.run([sys.executable, "-m", "residency_monitor", "--help"],
                         capture_output=True, text=True, check=True)
    assert "replay" in out.stdout
