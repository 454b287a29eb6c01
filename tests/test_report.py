"""``residency-monitor report``: evidence reports from replay records and audit logs.

The inputs are made by the real command line (``replay`` over the bundled
sample and the shared corpus, under a site policy with zones, a valid and an
expired exception); only tiny edge-case files are written by hand. Every
figure is checked three ways: JSON, CSV and the HTML page agree with each
other and with a computation straight from the records written here.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
import re
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import zlib
from collections import Counter, defaultdict
from datetime import datetime, timezone
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import ROOT, corpus_files

from residency_monitor.cli import main

SAMPLE = ROOT / "residency_monitor" / "data" / "sample.pcap"
MACAU = ROOT / "configs" / "policies" / "macau-pdpa.yaml"

# The Macau pack with this (imaginary) site's zones and exceptions: the sample's CRM in the
# US and its Greater Bay Area partner are approved, a Japanese travel site's approval has
# expired, and the corpus's old US traffic was covered by an exception that ended in 2015.
SITE_ZONES = """zones:
  - name: finance
    networks: [10.10.3.0/24]
    classification: sensitive
    owner: "Finance <finance@example.mo>"
  - name: office
    networks: [192.168.1.0/24]
    classification: personal
"""
SITE_EXCEPTIONS = """exceptions:
  - id: crm-us
    match:
      sni: ["api.crm-saas-us.example"]
    zones: [finance]
    waives: [residency]
    reason: "DPA signed 2026-01-10, Art. 20(1) notification ref 123/2026"
    owner: "DPO <dpo@example.mo>"
    expires: 2030-06-30
  - id: gba-contract
    match:
      country: [CN]
    waives: [residency]
    reason: "GBA standard contract registered with DSPDP"
    owner: "DPO <dpo@example.mo>"
    expires: 2030-12-31
  - id: kyoto-travel
    match:
      sni: ["www.kyoto-travel.example"]
    waives: [residency]
    reason: "Staff travel bookings, notification ref 77/2024"
    owner: "HR <hr@example.mo>"
    expires: 2025-12-31
  - id: legacy-us
    match:
      country: [US]
    zones: [default]
    waives: [residency, no_handshake, tls_version, plaintext]
    reason: "Authorisation 12/2010 for the old mail and web hosting"
    owner: "IT <it@example.mo>"
    expires: 2015-12-31
"""


def _policy_text() -> str:
    text = MACAU.read_text()
    assert "\nzones: []\n" in text and "\nexceptions: []\n" in text
    return text.replace("\nzones: []\n", "\n" + SITE_ZONES).replace(
        "\nexceptions: []\n", "\n" + SITE_EXCEPTIONS)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "residency_monitor", *args],
                          capture_output=True, text=True, timeout=300)


def _report(*args: str):
    return CliRunner().invoke(main, ["report", *args], catch_exceptions=False)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> dict[str, Path]:
    """Replay records of the sample (with interim records) and of the corpus, one policy."""
    d = tmp_path_factory.mktemp("report")
    policy = d / "site-policy.yaml"
    policy.write_text(_policy_text())
    out = {"dir": d, "policy": policy, "sample": d / "sample.jsonl",
           "sample_final": d / "sample-final.jsonl"}
    # a 5 s active timeout makes interim records of the sample's longer flows
    for path, extra in ((out["sample"], ["--active-timeout", "5"]),
                        (out["sample_final"], ["--no-interim"])):
        res = _cli("replay", "-q", "--policy", str(policy), "-o", str(path), *extra,
                   str(SAMPLE))
        assert res.returncode == 0, res.stderr
    captures = corpus_files()
    if captures:
        out["corpus"] = d / "corpus.jsonl"
        res = _cli("replay", "-q", "--policy", str(policy), "-o", str(out["corpus"]),
                   *map(str, captures))
        assert res.returncode == 0, res.stderr
    return out


def _corpus(site: dict[str, Path]) -> Path:
    if "corpus" not in site:
        pytest.skip("shared corpus not found (../shared/corpus/pcaps beside the checkout)")
    return site["corpus"]


def _records(*paths: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for p in paths for line in p.read_text().splitlines() if line]


# --------------------------------------------------------------------------------------------
# An independent computation from the records, written for the test
# --------------------------------------------------------------------------------------------


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _flows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Final records, and for flows without one their last interim record."""
    def key(r):
        return (r["client_ip"], r["client_port"], r["server_ip"], r["server_port"],
                r["transport"], r["icmp_id"], r["vlan"], r["ts_start"])
    finals = [r for r in records if r["final"]]
    have = {key(r) for r in finals}
    last: dict[Any, dict[str, Any]] = {}
    for r in records:
        if not r["final"] and key(r) not in have and (
                key(r) not in last or r["ts_end"] >= last[key(r)]["ts_end"]):
            last[key(r)] = r
    return finals + list(last.values())


def _expected(records: list[dict[str, Any]], lo: float = -math.inf,
              hi: float = math.inf) -> dict[str, Any]:
    flows = [r for r in _flows(records) if lo <= r["ts_start"] < hi]
    judged = [r for r in flows if r["direction"] == "outbound"
              and r["verdict"] in ("compliant", "violation", "exempt")]

    def fig(rs):
        return [len(rs), sum(r["bytes_out"] for r in rs), sum(r["bytes_in"] for r in rs)]

    def group(rs, keyf):
        out = defaultdict(list)
        for r in rs:
            for k in keyf(r):
                out[k].append(r)
        return {k: fig(v) for k, v in out.items()}

    def tls(r):
        if r["tls_version"]:
            return [r["tls_version"]]
        if r["app"] == "quic" or r["quic_version"]:
            return ["TLS 1.3"]
        return ["plaintext" if r["plaintext"] else "no TLS seen"]

    violations = [r for r in judged if r["verdict"] == "violation"]
    lat = sorted(r["detection_latency_s"] for r in violations
                 if r["detection_latency_s"] is not None)
    return {
        "flows": len(flows),
        "verdict": group(flows, lambda r: [r["verdict"]]),
        "flow_map": group(judged, lambda r: [(r["zone"] or "-", r["dst_country"] or "??")]),
        "rule": group(violations, lambda r: r["violations"]),
        "tls": group(judged, tls),
        "exception_used": group(judged, lambda r: [r["exception"]] if r["exception"] else []),
        "exception_expired": group(
            judged, lambda r: [r["exception_expired"]] if r["exception_expired"] else []),
        "visibility": {
            "outbound": fig(judged),
            "located": fig([r for r in judged if r["dst_country"]]),
            "tls_seen": fig([r for r in judged if r["tls_version"] or r["tls_client_versions"]
                             or r["quic_version"]]),
            "plaintext": fig([r for r in judged if r["plaintext"]]),
            "encrypted_dns": fig([r for r in judged if r["encrypted_dns"]]),
            "with_notes": fig([r for r in judged if r["notes"]]),
        },
        "latency": (len(lat), statistics.median(lat) if lat else None,
                    lat[math.ceil(0.9 * len(lat)) - 1] if lat else None,
                    lat[-1] if lat else None),
        "first": _iso(min(r["ts_start"] for r in flows)) if flows else None,
    }


# --------------------------------------------------------------------------------------------
# Reading the three formats back
# --------------------------------------------------------------------------------------------


class _Rows(HTMLParser):
    """Table rows with data-section, their numeric cells' text, and every chart element."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict[str, str]] = []
        self.cells: list[tuple[str, str]] = []   # (class, text) of the current row
        self.cls: str | None = None
        self.text = ""
        self.svg: Counter[str] = Counter()
        self.svg_titles = 0
        self.in_svg = 0

    def handle_starttag(self, tag, attrs):
        a = {k: v or "" for k, v in attrs}
        if tag == "tr" and "data-section" in a:
            self.rows.append(a)
            self.cells = []
            a["_cells"] = self.cells  # type: ignore[assignment]
        elif tag == "td":
            self.cls, self.text = a.get("class", ""), ""
        if tag == "svg":
            self.in_svg += 1
            self.svg["svg#" + a.get("id", "")] += 1
        elif self.in_svg:
            self.svg[f"{tag}.{a.get('class', '')}"] += 1

    def handle_endtag(self, tag):
        if tag == "td" and self.cls is not None:
            self.cells.append((self.cls, self.text))
            self.cls = None
        if tag == "svg":
            self.in_svg -= 1
        if tag == "title" and self.in_svg:
            self.svg_titles += 1

    def handle_data(self, data):
        if self.cls is not None:
            self.text += data


def _html_rows(page: str) -> tuple[dict[tuple[str, ...], list[int]], _Rows]:
    parser = _Rows()
    parser.feed(page)
    out = {}
    for row in parser.rows:
        # the numbers shown agree with the row's machine-readable attributes
        for cls, text in row["_cells"]:  # type: ignore[attr-defined]
            if cls in ("flows", "bytes-out", "bytes-in"):
                assert int(text.replace(",", "")) == int(row["data-" + cls]), (row, text)
        if "data-flows" not in row:
            continue
        key = (row["data-section"], row["data-key"], row.get("data-subkey", ""),
               row.get("data-item", ""))
        assert key not in out, key
        out[key] = [int(row["data-flows"]), int(row["data-bytes-out"]),
                    int(row["data-bytes-in"])]
    return out, parser


def _csv_rows(text: str) -> dict[tuple[str, ...], list[int]]:
    out = {}
    for row in csv.DictReader(io.StringIO(text)):
        if row["flows"] == "":
            continue
        key = (row["section"], row["key"], row["subkey"], row["item"])
        assert key not in out, key
        out[key] = [int(row["flows"]), int(row["bytes_out"]), int(row["bytes_in"])]
    return out


def _json_rows(model: dict[str, Any]) -> dict[tuple[str, ...], list[int]]:
    """The JSON model's figures keyed like the CSV rows."""
    out: dict[tuple[str, ...], list[int]] = {}

    def put(key, d):
        out[key] = [d["flows"], d["bytes_out"], d["bytes_in"]]

    for v, t in model["verdicts"].items():
        put(("verdict", v, "", ""), t)
    for c in model["flow_map"]:
        put(("flow_map", c["zone"], c["country"], ""), c)
    for b in model["violations_over_time"]:
        put(("violations_over_time", b["start"], b["rule"], ""), b)
    for rs in model["rules"]:
        put(("rule", rs["rule"], "", ""), rs["tally"])
        for d in rs["destinations"]:
            put(("top_destination", rs["rule"], d["country"], d["name"]), d["tally"])
    for t in model["tls"]:
        put(("tls", t["version"], "", ""), t)
    for name, t in model["exceptions_used"].items():
        put(("exception_used", name, "", ""), t)
    for x in model["exceptions_expired"]:
        put(("exception_expired", x["exception"], x["owner"] or "", x["expired"] or ""),
            x["tally"])
    for name, t in model["visibility"].items():
        if isinstance(t, dict) and "flows" in t:
            put(("visibility", name, "", ""), t)
    return out


def _all_formats(tmp_path: Path, *args: str) -> tuple[dict[str, Any], str, str]:
    outs = {}
    for fmt in ("json", "csv", "html"):
        out = tmp_path / f"report.{fmt}"
        res = _report("--format", fmt, "-o", str(out), *args)
        assert res.exit_code == 0, res.output
        outs[fmt] = out.read_text()
    return json.loads(outs["json"]), outs["csv"], outs["html"]


def _check_against(model: dict[str, Any], expected: dict[str, Any]) -> None:
    assert model["counts"]["flows"] == expected["flows"]
    sections = {("verdict", k, "", ""): v for k, v in expected["verdict"].items()}
    sections.update({("flow_map", z, c, ""): v for (z, c), v in expected["flow_map"].items()})
    sections.update({("rule", k, "", ""): v for k, v in expected["rule"].items()})
    sections.update({("tls", k, "", ""): v for k, v in expected["tls"].items()})
    sections.update({("exception_used", k, "", ""): v
                     for k, v in expected["exception_used"].items()})
    sections.update({("visibility", k, "", ""): v for k, v in expected["visibility"].items()})
    got = {k: v for k, v in _json_rows(model).items()
           if k[0] in ("verdict", "flow_map", "rule", "tls", "exception_used", "visibility")}
    assert got == sections
    expired = {x["exception"]: [x["tally"]["flows"], x["tally"]["bytes_out"],
                                x["tally"]["bytes_in"]] for x in model["exceptions_expired"]}
    assert expired == expected["exception_expired"]
    lat = model["latency"]
    assert (lat["count"], lat["median_s"], lat["p90_s"], lat["max_s"]) == expected["latency"]
    # over time: every violating flow counted once per rule it broke, in some bucket
    per_rule: Counter[str] = Counter()
    for b in model["violations_over_time"]:
        per_rule[b["rule"]] += b["flows"]
    assert per_rule == Counter({k: v[0] for k, v in expected["rule"].items()})
    assert set(b["start"] for b in model["violations_over_time"]) <= set(model["buckets"])


# --------------------------------------------------------------------------------------------
# The tests
# --------------------------------------------------------------------------------------------


def test_sample_report_agrees_with_records_in_every_format(site, tmp_path):
    model, csv_text, page = _all_formats(tmp_path, str(site["sample"]))
    records = _records(site["sample"])
    expected = _expected(records)
    _check_against(model, expected)
    assert _csv_rows(csv_text) == _json_rows(model)
    assert _html_rows(page)[0] == _json_rows(model)
    # what this site's policy makes of the sample: 12 outbound flows, 2 exempt, one expired
    assert model["verdicts"]["exempt"]["flows"] == 2
    assert set(model["exceptions_used"]) == {"crm-us", "gba-contract"}
    assert [x["exception"] for x in model["exceptions_expired"]] == ["kyoto-travel"]
    assert model["visibility"]["outbound"]["flows"] == 11   # the ICMP echo is not judged
    assert {r["rule"] for r in model["rules"]} == {"residency", "plaintext", "tls_version"}
    assert model["granularity"] == "hour" and len(model["buckets"]) == 1
    assert model["source"] == "replay records" and model["policies"] == []


def test_interim_records_count_each_flow_once(site, tmp_path):
    with_interim = _records(site["sample"])
    assert any(not r["final"] for r in with_interim), "the fixture should make interim records"
    a, _, _ = _all_formats(tmp_path, str(site["sample"]))
    b, _, _ = _all_formats(tmp_path, str(site["sample_final"]))
    superseded = sum(not r["final"] for r in with_interim)
    assert a["counts"]["records superseded (interim or repeated)"] == superseded
    for key in ("verdicts", "flow_map", "rules", "tls", "visibility", "latency"):
        assert a[key] == b[key], key


def test_corpus_and_sample_report(site, tmp_path):
    corpus = _corpus(site)
    model, csv_text, page = _all_formats(tmp_path, str(site["sample"]), str(corpus))
    expected = _expected(_records(site["sample"], corpus))
    _check_against(model, expected)
    assert _csv_rows(csv_text) == _json_rows(model)
    assert _html_rows(page)[0] == _json_rows(model)
    # the corpus spans years: the chart goes per year, and both exception outcomes occur
    assert model["granularity"] == "year"
    assert "legacy-us" in model["exceptions_used"]
    assert "legacy-us" in {x["exception"] for x in model["exceptions_expired"]}
    for rs in model["rules"]:
        assert len(rs["destinations"]) <= 10
        shown = sum(d["tally"]["flows"] for d in rs["destinations"])
        assert shown <= rs["tally"]["flows"]
        assert (shown == rs["tally"]["flows"]) == (rs["more_destinations"] == 0)


def test_date_range_filters_by_flow_start(site, tmp_path):
    corpus = _corpus(site)
    records = _records(site["sample"], corpus)
    lo = datetime(2013, 1, 1, tzinfo=timezone.utc).timestamp()
    hi = datetime(2019, 1, 1, tzinfo=timezone.utc).timestamp()
    model, csv_text, _ = _all_formats(tmp_path, "--from", "2013-01-01", "--to", "2018-12-31",
                                      str(site["sample"]), str(corpus))
    expected = _expected(records, lo, hi)
    assert 0 < expected["flows"] < len(_flows(records))
    _check_against(model, expected)
    assert model["period_from"] == "2013-01-01T00:00:00.000000Z"
    assert model["period_to"] == "2019-01-01T00:00:00.000000Z"
    assert model["filtered"] is True and model["granularity"] == "year"
    assert model["buckets"][0].startswith("2013") and model["buckets"][-1].startswith("2018")
    # a full ISO time works too, and an hour of the sample is bucketed per hour
    start = min(r["ts_start"] for r in _records(site["sample"]))
    iso_from = _iso(start + 30)
    m2, _, _ = _all_formats(tmp_path, "--from", iso_from, str(site["sample"]))
    _check_against(m2, _expected(_records(site["sample"]), start + 30))
    assert m2["granularity"] == "hour"


def test_empty_range_exits_3_and_bad_dates_exit_2(site):
    res = _report("--from", "2031-01-01", str(site["sample"]))
    assert res.exit_code == 3
    assert "no flow records in the period" in res.stderr
    res = _report("--from", "last tuesday", str(site["sample"]))
    assert res.exit_code == 2 and "--from" in res.stderr


def test_bad_line_exits_2_naming_file_and_line(site, tmp_path):
    lines = site["sample"].read_text().splitlines()
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines[:3] + ["{not json"] + lines[3:]) + "\n")
    res = _report(str(bad))
    assert res.exit_code == 2
    assert f"{bad}:4: not a JSON line" in res.stderr
    odd = tmp_path / "odd.jsonl"
    odd.write_text(lines[0] + "\n" + '{"hello": "world"}\n')
    res = _report(str(odd))
    assert res.exit_code == 2 and f"{odd}:2:" in res.stderr
    res = _report(str(tmp_path / "missing.jsonl"))
    assert res.exit_code == 2


def test_partial_last_line_and_unknown_types_are_counted(site, tmp_path):
    """Hand-made audit segments around real records: the edges the writer can leave."""
    records = [json.loads(x) for x in site["sample"].read_text().splitlines()]
    judged = [r for r in records if r["verdict"] in ("violation", "exempt")]
    log = tmp_path / "audit"
    log.mkdir()

    def entry(seq: int, kind: str, data: dict[str, Any], ts: float) -> str:
        return json.dumps({"seq": seq, "time": _iso(ts), "type": kind, "data": data,
                           "prev": "0" * 64})

    t0 = min(r["ts_start"] for r in records)
    first = [entry(0, "segment", {}, t0 - 5),
             entry(1, "start", {"version": "0.1.0"}, t0 - 5),
             entry(2, "policy", {"name": "site", "sha256": "a" * 64, "path": "p.yaml",
                                 "trigger": "start", "result": "loaded", "errors": []}, t0 - 4),
             entry(3, "mystery", {"x": 1}, t0)]
    first += [entry(4 + i, "verdict", r, r["ts_start"]) for i, r in enumerate(judged[:5])]
    # a live verdict (alerted before its flow ended) names the flow but is not its record
    first.append(entry(50, "verdict", {"stage": "live", "ts_start": judged[0]["ts_start"],
                                       "verdict": "violation", "violations": ["residency"]},
                       judged[0]["ts_start"]))
    (log / "audit-20260302T085955Z.jsonl.gz").write_bytes(
        gzip.compress(("\n".join(first) + "\n").encode()))
    # a second segment opened in the same second sorts after it, whatever name order says;
    # an interrupted compression leaves a .gz twin that must not be read twice
    same_second = [entry(60, "checkpoint", {}, t0 + 1), entry(61, "retention", {}, t0 + 1)]
    (log / "audit-20260302T085955Z-1.jsonl").write_text("\n".join(same_second) + "\n")
    (log / "audit-20260302T085955Z-1.jsonl.gz").write_bytes(gzip.compress(b"{broken"))
    second = [entry(100 + i, "verdict", r, r["ts_start"]) for i, r in enumerate(judged[5:])]
    second.append(entry(200, "policy", {"name": "site", "sha256": "b" * 64, "path": "p.yaml",
                                        "trigger": "SIGHUP", "result": "refused",
                                        "errors": ["p.yaml:3: bad"]}, t0 + 60))
    partial = entry(300, "verdict", judged[0], t0 + 70)[:40]
    (log / "audit-20260302T090100Z.jsonl").write_text("\n".join(second) + "\n" + partial)
    model, csv_text, page = _all_formats(tmp_path, str(log))
    assert model["source"] == "audit log"
    assert [Path(f["path"]).name for f in model["inputs"]] == [
        "audit-20260302T085955Z.jsonl.gz", "audit-20260302T085955Z-1.jsonl",
        "audit-20260302T090100Z.jsonl"]
    assert model["inputs"][2]["partial_last_line"] is True
    assert model["counts"]["live verdict"] == 1 and model["counts"]["retention"] == 1
    assert model["counts"]["partial last lines"] == 1
    assert model["counts"]["unknown type mystery"] == 1
    assert any("last line is incomplete" in note for note in model["notes"])
    assert any("no compliant flows" in note for note in model["notes"])
    assert [(p["sha256"][0], p["loads"]) for p in model["policies"]] == [("a", 1)]
    assert [e["result"] for e in model["policy_events"]] == ["loaded", "refused"]
    _check_against(model, _expected(judged))
    assert _html_rows(page)[0] == _csv_rows(csv_text) == _json_rows(model)
    assert "refused" in page and "a" * 64 in page
    # a window after the first load still names the policy in force at its start
    later = _report("--format", "json", "--from", _iso(t0 + 1), str(log))
    assert later.exit_code == 0, later.output
    in_force = json.loads(later.stdout)["policies"]
    assert [(p["sha256"][0], p["in_force_at_start"]) for p in in_force] == [("a", True)]
    # a gzip segment cut short is read up to the cut, and said
    blob = (log / "audit-20260302T085955Z.jsonl.gz").read_bytes()
    (log / "audit-20260302T085955Z.jsonl.gz").write_bytes(blob[:len(blob) - 30])
    cut = json.loads(_report("--format", "json", str(log)).stdout)
    assert cut["inputs"][0]["gzip_truncated"] is True
    assert any("gzip stream ends early" in note for note in cut["notes"])


def test_html_is_self_contained_and_escaped(site, tmp_path):
    records = site["sample"].read_text().splitlines()
    hostile = json.loads(records[1])
    hostile.update(tls_sni='<script>alert("x")</script>.example', zone="<b>zone</b>",
                   verdict="violation", violations=["residency"], direction="outbound",
                   final=True, dst_country="US", dst_as_org="Evil & Co <img onerror=x>")
    path = tmp_path / "hostile.jsonl"
    path.write_text(json.dumps(hostile) + "\n")
    page = _report(str(path)).stdout
    assert page.startswith("<!DOCTYPE html>")
    for needle in ("http://", "https://", "src=", "<script", "url(", "@import", "<link",
                   "<img", "<b>zone"):
        assert needle not in page, needle
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;.example" in page
    assert "Evil &amp; Co &lt;img onerror=x&gt;" in page
    assert "@media print" in page and "break-before: page" in page
    _, parser = _html_rows(page)
    assert parser.svg["svg#flow-map-chart"] == 1 and parser.svg["svg#violations-chart"] == 1
    assert parser.svg["path.link violation"] == 1
    assert parser.svg_titles >= 3


HAVE_AUDIT = "--audit" in _cli("replay", "--help").stdout


@pytest.mark.skipif(not HAVE_AUDIT,
                    reason="replay --audit (the audit log writer) is not in this checkout yet")
@pytest.mark.parametrize("audit_all", [True, False], ids=["all-flows", "violations-only"])
def test_report_on_a_real_audit_log(site, tmp_path, audit_all):
    """The audit log written by ``replay --audit``, interim verdicts and all."""
    logdir, recs = tmp_path / "audit", tmp_path / "recs.jsonl"
    res = _cli("replay", "-q", "--policy", str(site["policy"]), "--active-timeout", "5",
               "--audit", str(logdir), *(["--audit-all"] if audit_all else []),
               "-o", str(recs), str(SAMPLE), *map(str, corpus_files()))
    assert res.returncode == 0, res.stderr
    records = _records(recs)
    assert any(not r["final"] for r in records)
    if not audit_all:     # the log keeps what is not plainly compliant
        records = [r for r in records if r["verdict"] != "compliant"]
    model, csv_text, page = _all_formats(tmp_path, str(logdir))
    assert model["source"] == "audit log"
    _check_against(model, _expected(records))
    assert _html_rows(page)[0] == _csv_rows(csv_text) == _json_rows(model)
    assert [(p["name"], len(p["sha256"])) for p in model["policies"]] == [("macau-pdpa", 64)]
    assert model["counts"]["start"] == model["counts"]["stop"] == 1
    caveat = any("holds no compliant flows" in note for note in model["notes"])
    assert caveat is not audit_all
    kyoto = next(x for x in model["exceptions_expired"] if x["exception"] == "kyoto-travel")
    assert (kyoto["owner"], kyoto["expired"]) == ("HR <hr@example.mo>", "2025-12-31")
    assert kyoto["logged"] >= 1 and kyoto["tally"]["flows"] == 1


# --------------------------------------------------------------------------------------------
# The page in a real browser
# --------------------------------------------------------------------------------------------

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--disable-quic",
                  "--hide-scrollbars"]
A4_WIDTH_PX = 794    # 210 mm at 96 px per inch

# Injected into a copy of the page only: measures layout where the browser knows it.
LAYOUT_PROBE = """<script>
var worst = 0, who = "";
document.querySelectorAll("body *").forEach(function (el) {
  var r = el.getBoundingClientRect();
  if (r.right > worst) { worst = r.right; who = el.tagName + "#" + el.id; }
});
document.body.setAttribute("data-layout", JSON.stringify({
  scroll: document.documentElement.scrollWidth, inner: window.innerWidth, right: worst,
  who: who, charts: document.querySelectorAll("svg.chart").length,
  links: document.querySelectorAll("#flow-map-chart path.link").length,
  bars: document.querySelectorAll("#violations-chart rect.bar").length,
  chartWidth: document.getElementById("flow-map-chart").getBoundingClientRect().width}));
</script>"""


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("no Chromium installed (Debian package: chromium)")


def _browser(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[bytes]:
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run([_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                               *args], capture_output=True, timeout=timeout)


def _png_pixels(data: bytes) -> tuple[int, int, int, list[bytes]]:
    """Width, height, bytes per pixel and unfiltered rows of an 8-bit RGB(A) PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width = 8, b"", 0
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, colour = struct.unpack(">IIBB", body[:10])
            assert depth == 8 and colour in (2, 6), (depth, colour)
            bpp = 3 if colour == 2 else 4
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw = zlib.decompress(idat)
    stride = width * bpp
    rows, prev = [], bytearray(stride)
    for y in range(height):
        f = raw[y * (stride + 1)]
        cur = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        if f == 1:
            for i in range(bpp, stride):
                cur[i] = (cur[i] + cur[i - bpp]) & 255
        elif f == 2:
            cur = bytearray((a + b) & 255 for a, b in zip(cur, prev, strict=True))
        elif f == 3:
            for i in range(stride):
                left = cur[i - bpp] if i >= bpp else 0
                cur[i] = (cur[i] + ((left + prev[i]) >> 1)) & 255
        elif f == 4:
            for i in range(stride):
                a = cur[i - bpp] if i >= bpp else 0
                b, c = prev[i], prev[i - bpp] if i >= bpp else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else b if pb <= pc else c
                cur[i] = (cur[i] + pred) & 255
        rows.append(bytes(cur))
        prev = cur
    return width, height, bpp, rows


@pytest.fixture(scope="module")
def real_page(site, tmp_path_factory) -> Path:
    """The HTML report of the audit log of the sample and the corpus (replay records until
    ``replay --audit`` exists)."""
    d = tmp_path_factory.mktemp("page")
    inputs = [str(site["sample"])] + ([str(site["corpus"])] if "corpus" in site else [])
    if HAVE_AUDIT:
        res = _cli("replay", "-q", "--policy", str(site["policy"]), "--audit", str(d / "audit"),
                   "-o", str(d / "recs.jsonl"), str(SAMPLE), *map(str, corpus_files()))
        assert res.returncode == 0, res.stderr
        inputs = [str(d / "audit")]
    out = d / "report.html"
    res = _report("-o", str(out), *inputs)
    assert res.exit_code == 0, res.output
    return out


def test_chromium_lays_the_page_out_within_a4_width(real_page, tmp_path):
    probe = tmp_path / "probe.html"
    probe.write_text(real_page.read_text().replace("</body>", LAYOUT_PROBE + "</body>"))
    res = _browser(f"--window-size={A4_WIDTH_PX},1123", "--virtual-time-budget=3000",
                   "--dump-dom", probe.as_uri())
    assert res.returncode == 0, res.stderr.decode(errors="replace")[-2000:]
    found = re.search(rb'data-layout="([^"]*)"', res.stdout)
    assert found, res.stdout[:500]
    layout = json.loads(found.group(1).decode().replace("&quot;", '"'))
    assert layout["scroll"] <= layout["inner"], layout
    assert layout["right"] <= layout["inner"], layout
    assert layout["charts"] == 3 and layout["links"] >= 3 and layout["bars"] >= 3, layout
    assert layout["chartWidth"] > 0.6 * A4_WIDTH_PX, layout


def test_chromium_screenshot_renders_the_report(real_page, tmp_path):
    shot = tmp_path / "report.png"
    res = _browser("--window-size=1000,1800", f"--screenshot={shot}", real_page.as_uri())
    assert res.returncode == 0 and shot.is_file(), res.stderr.decode(errors="replace")[-2000:]
    width, height, bpp, rows = _png_pixels(shot.read_bytes())
    assert (width, height) == (1000, 1800)
    pixels = Counter()
    for row in rows[::4]:
        for x in range(0, width * bpp, bpp * 4):
            pixels[row[x:x + 3]] += 1
    background = pixels.most_common(1)[0][0]
    assert background == b"\xff\xff\xff"
    assert len(pixels) > 50, "the screenshot is (nearly) blank"
    assert sum(c for p, c in pixels.items() if p != background) > 0.05 * sum(pixels.values())
    assert bytes((0xD5, 0x5E, 0x00)) in pixels, "no residency bar (#d55e00) in the chart"
    # nothing spills to the right of the centred A4-wide page
    margin = [row[x:x + 3] for row in rows for x in range((width - 40) * bpp, width * bpp, bpp)]
    assert set(margin) == {background}


def test_chromium_prints_one_page_or_more_per_section(real_page, tmp_path):
    pdf = tmp_path / "report.pdf"
    res = _browser("--no-pdf-header-footer", f"--print-to-pdf={pdf}", real_page.as_uri())
    assert res.returncode == 0 and pdf.is_file(), res.stderr.decode(errors="replace")[-2000:]
    data = pdf.read_bytes()
    assert data.startswith(b"%PDF")
    pages = len(re.findall(rb"/Type\s*/Page\b", data))
    sections = real_page.read_text().count("<section ")
    assert pages >= sections, (pages, sections)
