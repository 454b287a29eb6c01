"""The policy, geo and replay --policy commands, as an admin runs them."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from conftest import ROOT, SHARED

from residency_monitor.cli import main

PACKS = sorted((ROOT / "configs" / "policies").glob("*.yaml"))
MACAU = ROOT / "configs" / "policies" / "macau-pdpa.yaml"
BAD = """policy:
  name: broken
  title: "x"
  legal_basis: "x"
  as_of: 2026-11-01
default_zone: {name: default, classification: personal, owner: IT}
classifications:
  personal:
    permitted_countries: [MO, XX]
    min_tls: "TLS 1.5"
zones:
  - name: lab
    networks: [10.0.0.0/33]
    classification: secret
"""


def _run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_policy_check_accepts_the_shipped_packs():
    res = _run("policy", "check", *map(str, PACKS))
    assert res.exit_code == 0
    assert res.stdout.count(": OK: ") == len(PACKS) == 3
    assert "sha256 " in res.stdout


def test_policy_check_lists_every_error_with_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD)
    res = _run("policy", "check", str(bad), str(MACAU))
    assert res.exit_code == 1
    errors = [line for line in res.stderr.splitlines() if line.startswith(str(bad) + ":")]
    text = "\n".join(errors)
    assert f"{bad}:9:" in text and "XX" in text                 # unknown country, its line
    assert f"{bad}:10:" in text and "TLS 1.5" in text           # bad TLS version
    assert f"{bad}:13:" in text and "10.0.0.0/33" in text       # bad CIDR
    assert f"{bad}:14:" in text and "secret" in text            # unknown classification
    assert "REFUSED (4 error(s))" in res.stderr
    assert f"{MACAU}: OK" in res.stdout                         # the good one is still checked


def test_replay_refuses_a_bad_policy_before_reading_anything(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD)
    res = _run("replay", "--policy", str(bad))
    assert res.exit_code == 2 and res.stdout == ""
    assert "policy refused" in res.stderr and f"{bad}:13:" in res.stderr


def test_replay_refuses_an_asn_database_as_a_country_source():
    asn = SHARED / "geo" / "GeoLite2-ASN-Test.mmdb"
    if not asn.exists():
        pytest.skip(f"MaxMind test databases not found at {asn.parent} (../shared)")
    res = _run("replay", "--geo-db", str(asn))
    assert res.exit_code == 2 and "geolocation" in res.stderr


def test_policy_explain_shows_the_deciding_rule():
    res = _run("policy", "explain", "--at", "2026-12-01", "--tls-version", "TLS 1.2",
               "--geo-override", "203.0.113.0/24=CN", "203.0.113.7")
    assert res.exit_code == 0
    out = res.stdout
    assert out.startswith("destination 203.0.113.7: CN (source override")
    assert "macau-pdpa" in out and "Greater Bay Area" in out
    assert "violation" in out


def test_policy_explain_with_an_exception_and_zone(tmp_path):
    policy = tmp_path / "p.yaml"
    text = MACAU.read_text().replace("zones: []", (
        "zones:\n  - name: finance\n    networks: [10.10.3.0/24]\n"
        "    classification: sensitive\n    owner: Finance"))
    text = text.replace("exceptions: []", (
        "exceptions:\n  - id: crm\n    match: {sni: [crm.example.com]}\n"
        "    reason: contract\n    owner: DPO\n    expires: 2027-01-31"))
    policy.write_text(text)
    res = _run("policy", "explain", "--policy", str(policy), "--zone", "finance", "--sni",
               "crm.example.com", "--at", "2026-12-01", "--geo-override", "198.51.100.0/24=US",
               "198.51.100.9")
    assert res.exit_code == 0
    assert "finance" in res.stdout and "sensitive" in res.stdout and "crm" in res.stdout
    bad_zone = CliRunner().invoke(main, ["policy", "explain", "--policy", str(policy),
                                         "--zone", "nope", "198.51.100.9"])
    assert bad_zone.exit_code == 2 and "finance" in bad_zone.output


def test_geo_lookup_lists_every_source():
    res = _run("geo", "lookup", "--geo-override", "8.8.8.0/24=MO:test label", "8.8.8.8",
               "202.175.80.41")
    assert res.exit_code == 0
    lines = res.stdout.splitlines()
    assert lines[0].startswith("8.8.8.8: MO (source override")
    assert any("rir" in line and "US" in line for line in lines)
    assert any(line.startswith("202.175.80.41: MO (source rir") for line in lines)


def test_replay_records_carry_verdicts():
    res = _run("replay", "-q")
    recs = [json.loads(line) for line in res.stdout.splitlines()]
    verdicts = {r["verdict"] for r in recs}
    assert verdicts == {"compliant", "violation", "not_evaluated"}
    us = next(r for r in recs if r["tls_sni"] == "api.crm-saas-us.example")
    assert (us["dst_country"], us["dst_country_source"], us["violations"]) == (
        "US", "rir", ["residency"])
    assert us["explanation"].startswith("zone default (personal)")


def test_geo_status_shows_build_date_and_age():
    city = SHARED / "geo" / "GeoLite2-City-Test.mmdb"
    if not city.exists():
        pytest.skip(f"MaxMind test databases not found at {city.parent} (../shared)")
    res = _run("geo", "status", "--geo-db", str(city))
    assert res.exit_code == 0
    first, rir = res.stdout.splitlines()
    assert "kind city" in first and "GeoLite2-City" in first and "built 20" in first
    assert "days" in first and rir.startswith("rir (iptocc)")
