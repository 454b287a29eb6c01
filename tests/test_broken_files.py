"""Broken files: every kind of invalid policy or geolocation database, at start and while running.

At start each is refused by the real ``residency-monitor run`` (exit 2, the
file:line and the reason on standard error) before any capture. While
running, a real daemon is sent SIGHUP after each kind of invalid policy in
turn: each reload is refused and counted, the log gives file:line and the
reason, and afterwards the sample's traffic is still judged by the policy
that was in force. A geolocation database overwritten in place with a
truncated copy (what ``cp`` does) is refused at the next reload check, the
metrics say so, and lookups keep answering from the copy loaded before; the
daemon must not die of it (mapping the file in place, it died of SIGBUS).
"""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import ROOT, SHARED
from daemon_fixture import DaemonProcess, wait_until
from daemon_fixture import scrape as _metrics

RUN = [sys.executable, "-m", "residency_monitor", "run", "--interface", "no-such-if0"]
PACK = (ROOT / "configs" / "policies" / "macau-pdpa.yaml").read_text()
BUILDER = ROOT / "geo" / "build_test_dbs.py"
CRM = "13.107.42.14"      # the sample's CRM server: US by the registry data, MO in our database


def _zones(networks: str) -> Callable[[str], str]:
    zones = ("zones:\n  - name: finance\n    networks: [10.10.3.0/24]\n"
             "    classification: personal\n"
             f"  - name: hr\n    networks: [{networks}]\n    classification: personal\n")
    return lambda text: text.replace("zones: []\n", zones, 1)


#: kind -> (how to break the Macau pack, text on the line the error names, the reason)
BROKEN: dict[str, tuple[Callable[[str], str], str | None, str]] = {
    "syntax": (lambda t: t.replace("zones: []", "zones: [unclosed", 1), None,
               "YAML syntax error"),
    "unknown key": (lambda t: t.replace("  utc_offset:", "  utc_ofset:", 1), "utc_ofset",
                    "unknown key 'utc_ofset'"),
    "wrong type": (lambda t: t.replace("zones: []", "zones: {hr: 10.10.4.0/24}", 1),
                   "zones: {hr", "expected a list"),
    "bad CIDR": (_zones("10.10.4.0/33"), "10.10.4.0/33", "bad CIDR '10.10.4.0/33'"),
    "unknown country": (lambda t: t.replace("permitted_countries: [MO]",
                                            "permitted_countries: [MO, ZZ]", 1),
                        "[MO, ZZ]", "ZZ"),
    "overlapping zones": (_zones("10.10.4.0/24, 10.10.3.0/24"), "10.10.4.0/24, 10.10.3.0/24",
                          "already in zone 'finance'"),
    "exception without expiry": (
        lambda t: t.replace("exceptions: []\n", "exceptions:\n  - id: rmtest-crm\n    match: "
                            "{country: [US]}\n    reason: \"DPA signed\"\n    owner: DPO\n", 1),
        "- id: rmtest-crm", "missing required key 'expires'"),
}


def _line_of(text: str, marker: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if marker in line)


def _where(path: Path, text: str, marker: str | None) -> str:
    return f"{path}:{_line_of(text, marker)}:" if marker else f"{path}:"


# -- policies ---------------------------------------------------------------------------

@pytest.mark.parametrize("kind", list(BROKEN))
def test_each_kind_of_invalid_policy_is_refused_at_start(kind, tmp_path):
    breaker, marker, reason = BROKEN[kind]
    text = breaker(PACK)
    assert text != PACK
    policy = tmp_path / "policy.yaml"
    policy.write_text(text)
    res = subprocess.run([*RUN, "--policy", str(policy)], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 2, res.stderr      # not 3: refused before the capture is tried
    assert "policy refused" in res.stderr
    where = _where(policy, text, marker)
    assert any(where in line and reason in line for line in res.stderr.splitlines()), \
        (where, reason, res.stderr)
    check = subprocess.run([sys.executable, "-m", "residency_monitor", "policy", "check",
                            str(policy)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 1 and where in check.stderr and "REFUSED" in check.stderr


def test_every_invalid_policy_on_reload_leaves_the_running_one(pair, sample_replay, tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text(PACK)
    sha = hashlib.sha256(PACK.encode()).hexdigest()
    daemon = DaemonProcess(tmp_path / "daemon", [
        "capture:", f"  interfaces: [{pair.dev_b}]", f"  netns: {pair.b}",
        "flows: {tcp_idle: 2, tcp_closed: 1, udp_idle: 1}", f"policy: {policy}"])
    daemon.start()
    try:
        for n, (kind, (breaker, marker, reason)) in enumerate(BROKEN.items(), 1):
            text = breaker(PACK)
            policy.write_text(text)
            daemon.signal(signal.SIGHUP)
            assert wait_until(lambda n=n: len(_reloads(daemon)) >= n, 10), \
                (kind, daemon.log_text())
            event = _reloads(daemon)[n - 1]
            assert event["result"] == "failure", kind
            where = _where(policy, text, marker)
            assert any(where in e and reason in e for e in event["errors"]), (kind, event)
            metrics = _metrics(daemon.port)
            assert f'residency_policy_reloads_total{{result="failure"}} {float(n)}' in metrics
            assert "residency_policy_last_reload_successful 0.0" in metrics
            assert f'sha256="{sha}"' in metrics, kind      # the running policy's hash

        # The old policy still judges: the CRM server (US) is a residency violation under the
        # Macau pack, as before; the broken "exception" for US never applied.
        pair.replay(sample_replay, pps=2000)
    finally:
        assert daemon.stop() == 0
    crm = [r for r in daemon.final_records() if r["server_ip"] == CRM]
    assert crm and all(r["verdict"] == "violation" and "residency" in r["violations"]
                       and r["exception"] is None for r in crm)
    assert {r["dst_country"] for r in daemon.final_records()
            if r["verdict"] == "violation"} >= {"US", "CN", "HK", "JP", "DE", "SG"}


def _reloads(daemon: DaemonProcess) -> list[dict]:
    return [e for e in daemon.log_events() if e.get("event") == "policy_reload"]


# -- geolocation databases ----------------------------------------------------------------

@pytest.fixture
def country_db(tmp_path: Path) -> Path:
    """A GeoIP2-Country file (built with geo/build_test_dbs.py) that puts the CRM server in MO."""
    out = tmp_path / "GeoIP2-Country.mmdb"
    # Padded with other networks to several pages, so a truncated mapping would be SIGBUS
    entries = [[f"{CRM}/32", "MO"]] + [[f"45.{i >> 8}.{i & 255}.0/24", "DE"]
                                       for i in range(0, 8192, 2)]
    table = tmp_path / "networks.json"
    table.write_text(json.dumps(entries))
    subprocess.run([sys.executable, str(BUILDER), "--kind", "country", "--out", str(out),
                    "--from-json", str(table)], check=True, capture_output=True, timeout=120)
    assert out.stat().st_size > 3 * 4096
    return out


def _shared(name: str) -> Path:
    path = SHARED / "geo" / name
    if not path.is_file():
        pytest.skip(f"MaxMind test databases not found at {path.parent} "
                    "(../shared sits beside the checkout in CI)")
    return path


def test_unusable_databases_are_refused_at_start(tmp_path):
    truncated = tmp_path / "truncated.mmdb"
    data = _shared("GeoIP2-Country-Test.mmdb").read_bytes()
    truncated.write_bytes(data[: len(data) // 3])
    cases = [(tmp_path / "absent.mmdb", "cannot be opened"),
             (truncated, "cannot be opened"),
             (_shared("GeoLite2-ASN-Test.mmdb"), "holds AS numbers, not countries")]
    for path, reason in cases:
        res = subprocess.run([*RUN, "--config", str(_geo_config(tmp_path, path))],
                             capture_output=True, text=True, timeout=60)
        assert res.returncode == 2, res.stderr
        assert f"geolocation database {path}: " in res.stderr and reason in res.stderr, \
            res.stderr
        assert "residency-geo-" not in res.stderr     # the file's name, never our private copy
    # A City file where a Country file is expected is fine: it is refused only for its capture
    res = subprocess.run([*RUN, "--config", str(_geo_config(
        tmp_path, _shared("GeoIP2-City-Test.mmdb")))], capture_output=True, text=True,
        timeout=60)
    assert res.returncode == 3 and "no-such-if0" in res.stderr


def _geo_config(tmp_path: Path, database: Path) -> Path:
    config = tmp_path / f"geo-{database.name}.yaml"
    config.write_text(f"geo:\n  databases: [{database}]\n")
    return config


def test_a_database_truncated_in_place_while_running_keeps_the_previous_one(
        pair, sample_replay, country_db, tmp_path):
    daemon = DaemonProcess(tmp_path / "daemon", [
        "capture:", f"  interfaces: [{pair.dev_b}]", f"  netns: {pair.b}",
        "flows: {tcp_idle: 2, tcp_closed: 1, udp_idle: 1}",
        "geo:", f"  databases: [{country_db}]", "  reload_check_seconds: 1"])
    daemon.start()
    ok = 'residency_geo_database_last_reload_successful{source="maxmind:GeoIP2-Country"}'
    try:
        assert f"{ok} 1.0" in _metrics(daemon.port)
        data = country_db.read_bytes()
        country_db.write_bytes(data[: len(data) // 3])   # same inode, as `cp` overwrites
        assert wait_until(lambda: f"{ok} 0.0" in _metrics(daemon.port), 10), _metrics(daemon.port)
        refused = [e for e in daemon.log_events() if e.get("event") == "geo_reload"]
        assert refused and str(country_db) in refused[0]["msg"]
        assert "still using" in refused[0]["msg"] and "cannot be opened" in refused[0]["msg"]

        # lookups answer from the database loaded at start (the registry would say US)
        pair.replay(sample_replay, pps=2000)
        assert wait_until(lambda: CRM in _records_text(daemon), 20), daemon.log_text()[-2000:]
        assert daemon.proc is not None and daemon.proc.poll() is None

        country_db.write_bytes(data)                      # fixed: taken up at the next check
        assert wait_until(lambda: f"{ok} 1.0" in _metrics(daemon.port), 10)
    finally:
        assert daemon.stop() == 0
    crm = [r for r in daemon.final_records() if r["server_ip"] == CRM]
    assert crm and all((r["dst_country"], r["dst_country_source"]) == ("MO", "maxmind")
                       and r["verdict"] != "violation" for r in crm), crm


def _records_text(daemon: DaemonProcess) -> str:
    return daemon.records.read_text() if daemon.records.exists() else ""
