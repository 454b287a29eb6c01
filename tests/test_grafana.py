"""The Grafana dashboard, checked by hand-written rules and against a real Prometheus.

Grafana is not packaged for Debian, so nothing here loads the dashboard into
Grafana: the static tests check the JSON model's conventions (fixed uid, no
id, the datasource variable everywhere, panels that do not overlap, units and
descriptions, no per-address grouping) and the provisioning files.

The live test is the one that matters: the real daemon captures the bundled
sample replayed onto a veth pair, pushes alerts to a real Alertmanager (and
to a second URL where nothing listens, so the failure series exist), and a
real Prometheus scrapes it every second and evaluates the shipped alerting
rules. Then every ``expr`` of the dashboard, with Grafana's variables
substituted as Grafana would (``$__rate_interval``, ``$__range``, "All" and a
single selected value), runs as the query its panel sends (instant or range),
and must succeed and return data; so must every series selector on its own,
so an empty panel names the metric or matcher at fault. The alerting rules'
expressions run too: as written (they must not error) and in their ``bool``
form (a silent rule must still have series flowing through it).
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import re
import shutil
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from alertmanager_fixture import Alertmanager, WebhookReceiver
from conftest import ROOT
from daemon_fixture import DaemonProcess
from netns_fixture import NetnsPair, netns_pair, write_pcap
from prometheus_client.parser import text_string_to_metric_families
from prometheus_fixture import Prometheus, free_port, running_prometheus
from promql import (
    GrafanaTimes,
    finite_values,
    grafana_substitute,
    regex_escape,
    selectors,
    with_bool,
)

from residency_monitor.capture.files import open_capture
from residency_monitor.metrics import METRIC_NAMES
from residency_monitor.sample import SAMPLE_PATH

GRAFANA = ROOT / "configs" / "grafana"
DASHBOARD = GRAFANA / "residency-monitor.json"
PROVIDER = GRAFANA / "provisioning" / "dashboards" / "residency-monitor.yaml"
DATASOURCE = GRAFANA / "provisioning" / "datasources" / "prometheus.yaml"
README = GRAFANA / "README.md"
PROMETHEUS_YML = ROOT / "configs" / "prometheus" / "prometheus.yml"
RULES = ROOT / "configs" / "prometheus" / "rules" / "residency.rules.yml"
MACAU = ROOT / "configs" / "policies" / "macau-pdpa.yaml"
GEO_BUILDER = ROOT / "geo" / "build_test_dbs.py"

DATASOURCE_REF = {"type": "prometheus", "uid": "${datasource}"}
# Series Prometheus makes itself, not the daemon.
PROMETHEUS_SERIES = {"up", "ALERTS"}
# Sample names a metric family becomes in the exposition format.
SUFFIXES = ("", "_total", "_bucket", "_sum", "_count", "_info")
# Labels a panel may group by: all bounded (metrics.py), none an address, port or host name.
GROUPING_LABELS = {"rule", "network_zone", "country", "verdict", "version", "source",
                   "interface", "kind", "protocol", "reason", "result", "le", "alertname",
                   "severity", "site", "instance", "job"}
NO_QUERY_PANELS = {"row", "text"}

# The live run: what Prometheus scrapes and what the variables select.
SCRAPE_S = 1
SITE, INSTANCE = "e2e", "gw-e2e"
SAMPLE_FLOWS = 26            # final records per replay of the sample (README: 26 flows)


# --------------------------------------------------------------------------------------------
# The dashboard as data
# --------------------------------------------------------------------------------------------

def load_dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def all_panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, those inside collapsed rows too."""
    out = []
    for p in board["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))
    return out


def query_panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in all_panels(board) if p["type"] not in NO_QUERY_PANELS]


@dataclass(frozen=True)
class Query:
    """One target of one panel: what Grafana would send."""

    panel: str
    ref: str
    expr: str
    instant: bool

    def __str__(self) -> str:
        return f"panel {self.panel!r} query {self.ref}"


def dashboard_queries(board: dict[str, Any]) -> list[Query]:
    return [Query(p["title"], t["refId"], t["expr"], bool(t.get("instant")))
            for p in query_panels(board) for t in p["targets"]]


def variables(board: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in board["templating"]["list"]}


def rule_expressions() -> list[tuple[str, str]]:
    rules_dir = RULES.parent
    out = []
    for path in sorted(rules_dir.glob("*.yml")):
        if path.name.endswith(".test.yml"):
            continue
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                out.append((rule.get("alert") or rule["record"], rule["expr"]))
    return out


def metric_name(selector: str) -> str:
    name = selector.split("{", 1)[0]
    if name:
        return name
    m = re.search(r'__name__\s*=\s*"([^"]+)"', selector)
    assert m, f"selector {selector} names no metric"
    return m.group(1)


ALL_SELECTED = {"site": ".*", "instance": ".*", "network_zone": ".*"}
STATIC_TIMES = GrafanaTimes(range_s=86400, step_s=60, scrape_s=15)


# --------------------------------------------------------------------------------------------
# Static checks: the JSON model and the provisioning files
# --------------------------------------------------------------------------------------------

def test_dashboard_identity() -> None:
    board = load_dashboard()
    assert board["uid"] == "residency-monitor"
    assert board.get("id") is None                      # provisioning assigns it
    assert board["title"] == "Data residency"
    assert 36 <= board["schemaVersion"] <= 41            # Grafana 10 and 11
    assert "residency-monitor" in board["tags"]
    assert board["time"] == {"from": "now-24h", "to": "now"}
    assert re.fullmatch(r"\d+[smh]", board["refresh"])
    assert "__inputs" not in board                       # an export for import, not provisioning


def test_datasource_variable_is_used_by_every_panel_and_query() -> None:
    board = load_dashboard()
    ds = variables(board)["datasource"]
    assert ds["type"] == "datasource" and ds["query"] == "prometheus"
    for p in query_panels(board):
        assert p["datasource"] == DATASOURCE_REF, p["title"]
        for t in p["targets"]:
            assert t["datasource"] == DATASOURCE_REF, f"{p['title']} {t['refId']}"
    for v in board["templating"]["list"]:
        if v["type"] == "query":
            assert v["datasource"] == DATASOURCE_REF, v["name"]
    assert "${datasource}" not in "".join(q.expr for q in dashboard_queries(board))


def test_filter_variables_are_multi_select_with_all() -> None:
    vs = variables(load_dashboard())
    assert {"site", "instance", "network_zone"} <= vs.keys()
    for name in ("site", "instance", "network_zone"):
        v = vs[name]
        assert v["type"] == "query" and v["multi"] and v["includeAll"], name
        assert v["allValue"] == ".*", name    # "All" also matches series without the label
        m = re.fullmatch(r"label_values\((residency_\w+)(\{.*\})?,\s*(\w+)\)", v["query"])
        assert m and m.group(3) == name, v["query"]
        assert v["definition"] == v["query"]


def test_every_panel_has_a_title_description_and_queries() -> None:
    board = load_dashboard()
    ids = [p["id"] for p in all_panels(board)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for p in query_panels(board):
        assert p.get("title"), p
        assert len(p.get("description", "")) > 40, f"{p['title']}: say what to do when red"
        assert p["targets"], p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), p["title"]
        for t in p["targets"]:
            assert t["expr"].strip(), f"{p['title']} {t['refId']}"
            assert t.get("instant") != t.get("range"), f"{p['title']}: instant or range"
        if p["type"] in ("timeseries", "stat", "bargauge", "piechart"):
            defaults = p["fieldConfig"]["defaults"]
            assert defaults.get("unit") or defaults.get("mappings"), f"{p['title']}: unit"


def test_rows_are_the_issues_sections() -> None:
    rows = [p["title"] for p in load_dashboard()["panels"] if p["type"] == "row"]
    assert rows == ["Compliance", "Destinations", "TLS", "Detection & alerts",
                    "Capture health"]


def test_panels_do_not_overlap() -> None:
    boxes = []
    for p in all_panels(load_dashboard()):
        g = p["gridPos"]
        assert g["x"] >= 0 and g["w"] > 0 and g["h"] > 0 and g["x"] + g["w"] <= 24, p["title"]
        boxes.append((p["title"], g["x"], g["y"], g["x"] + g["w"], g["y"] + g["h"]))
    for i, (a, ax0, ay0, ax1, ay1) in enumerate(boxes):
        for b, bx0, by0, bx1, by1 in boxes[i + 1:]:
            assert ax1 <= bx0 or bx1 <= ax0 or ay1 <= by0 or by1 <= ay0, f"{a!r} overlaps {b!r}"


def test_no_panel_groups_by_an_unbounded_label() -> None:
    # Client addresses, server names and ports live in flow records, never in a panel.
    for q in dashboard_queries(load_dashboard()):
        for clause in re.findall(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*"
                                 r"\(([^)]*)\)", q.expr):
            labels = {s.strip() for s in clause.split(",") if s.strip()}
            assert labels <= GROUPING_LABELS, f"{q}: groups by {labels - GROUPING_LABELS}"
        for m in re.finditer(r'label_replace\([^)]*?,\s*"(\w+)"', q.expr):
            assert m.group(1) in GROUPING_LABELS, f"{q}: makes label {m.group(1)}"


def test_every_metric_is_in_the_daemons_catalogue() -> None:
    exported = {name + suffix for name in METRIC_NAMES for suffix in SUFFIXES}
    board = load_dashboard()
    for q in dashboard_queries(board):
        expr = grafana_substitute(q.expr, ALL_SELECTED, STATIC_TIMES)
        names = {metric_name(s) for s in selectors(expr)}
        assert names, f"{q}: no series selector"
        unknown = names - exported - PROMETHEUS_SERIES
        assert not unknown, f"{q} uses metrics the daemon does not export: {unknown}"


def test_every_variable_used_is_defined() -> None:
    board = load_dashboard()
    defined = {name: ".*" for name in variables(board) if name != "datasource"}
    for q in dashboard_queries(board):
        grafana_substitute(q.expr, defined, STATIC_TIMES)       # KeyError names the variable
    for v in variables(board).values():
        if v["type"] == "query":
            grafana_substitute(v["query"], defined, STATIC_TIMES)


def test_dashboard_provider_points_at_the_installed_dashboard() -> None:
    provider = yaml.safe_load(PROVIDER.read_text())
    assert provider["apiVersion"] == 1
    (p,) = provider["providers"]
    assert p["type"] == "file" and p["options"]["path"].startswith("/")
    assert p.get("folderUid") and p.get("folder")
    # The README's install line puts the JSON where the provider reads it.
    installed = f"{p['options']['path'].rstrip('/')}/{DASHBOARD.name}"
    assert f"configs/grafana/{DASHBOARD.name} {installed}" in README.read_text()
    assert f"configs/grafana/{PROVIDER.relative_to(GRAFANA)}" in README.read_text()


def test_datasource_example_matches_the_scrape_interval() -> None:
    (ds,) = yaml.safe_load(DATASOURCE.read_text())["datasources"]
    assert ds["type"] == "prometheus" and ds["uid"]
    # $__rate_interval is 4 x this: it must be Prometheus's scrape interval
    prometheus = yaml.safe_load(PROMETHEUS_YML.read_text())
    assert ds["jsonData"]["timeInterval"] == prometheus["global"]["scrape_interval"]


# --------------------------------------------------------------------------------------------
# The PromQL helpers
# --------------------------------------------------------------------------------------------

def test_selectors_skip_functions_keywords_and_grouping() -> None:
    expr = ('sum by (rule, zone) (label_replace(increase(a_total{x="1", y=~"a|b"}[5m]) > 0, '
            '"dst", "$1", "country", "(.+)")) or on (job) (b offset 5m == 1) '
            'unless ignoring (le) group_left () {__name__="c"} / vector(0) + time()')
    assert selectors(expr) == ['a_total{x="1", y=~"a|b"}', "b", '{__name__="c"}']


def test_with_bool_turns_filters_into_values() -> None:
    assert with_bool('sum(x{a!="1"}) > 35 * 86400') == 'sum(x{a!="1"}) > bool 35 * 86400'
    assert with_bool("x == bool 1") == "x == bool 1"


def test_grafana_substitution() -> None:
    times = GrafanaTimes(range_s=3600, step_s=15, scrape_s=15)
    assert grafana_substitute('rate(x{i=~"$instance"}[$__rate_interval]) offset ${__range}',
                              {"instance": ".*"}, times) == 'rate(x{i=~".*"}[60s]) offset 3600s'
    assert GrafanaTimes(range_s=60, step_s=60, scrape_s=15).builtins()["__rate_interval"] \
        == "75s"
    with pytest.raises(KeyError, match="zone"):
        grafana_substitute('x{z=~"$zone"}', {}, times)
    assert regex_escape("gw-1.example") == "gw-1\\\\.example"


# --------------------------------------------------------------------------------------------
# The live run: daemon, Alertmanager, Prometheus, two replays of the sample
# --------------------------------------------------------------------------------------------

@dataclass
class LiveRun:
    prom: Prometheus
    scrape: str
    start: float
    end: float
    selected: dict[str, str]      # one concrete value per filter variable, as Grafana sends it

    def times(self) -> GrafanaTimes:
        return GrafanaTimes(range_s=int(self.end - self.start) + 1, step_s=SCRAPE_S,
                            scrape_s=SCRAPE_S)

    def run(self, expr: str, instant: bool) -> dict[str, Any]:
        if instant:
            return self.prom.api("query", query=expr, time=f"{self.end:.3f}")
        return self.prom.api("query_range", query=expr, start=f"{self.start:.3f}",
                             end=f"{self.end:.3f}", step=f"{SCRAPE_S}s")


def _policy(path: Path) -> Path:
    """The Macau pack with a zone and an exception, so zone and exemption series exist."""
    policy = yaml.safe_load(MACAU.read_text())
    policy["zones"] = [{"name": "finance", "networks": ["10.10.3.0/24"],
                        "classification": "sensitive"}]
    policy["exceptions"] = [{
        "id": "kyoto-travel", "match": {"cidr": ["133.242.10.20/32"]}, "waives": ["residency"],
        "reason": "test exception", "owner": "tests", "expires": dt.date(2099, 12, 31)}]
    path.write_text(yaml.safe_dump(policy, sort_keys=False))
    return path


def _geo_database(path: Path) -> Path:
    """A small country database ten days old, so the age and maxmind series exist."""
    spec = importlib.util.spec_from_file_location("build_test_dbs", GEO_BUILDER)
    assert spec and spec.loader
    builder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builder)
    builder.build("country", [("13.107.42.0/24", "US"), ("60.246.5.0/24", "MO")], path,
                  build_epoch=int(time.time()) - 10 * 86400)
    return path


def _daemon_config(pair: NetnsPair, work: Path, alertmanager: str) -> list[str]:
    nobody = f"http://127.0.0.1:{free_port()}"      # refused: alerts_failed_total{reason}
    return [
        "capture:", f"  interfaces: [{pair.dev_b}]", f"  netns: {pair.b}",
        "flows: {tcp_idle: 5, tcp_closed: 1, udp_idle: 2}",
        f"policy: {_policy(work / 'policy.yaml')}",
        "geo:", f"  databases: [{_geo_database(work / 'country.mmdb')}]",
        "  overrides: [{network: 45.60.10.0/24, country: US, label: mail relay}]",
        "alertmanager:", f"  urls: [{alertmanager}, {nobody}]", "  resend_interval: 2",
        "  timeout: 1", f"  labels: {{site: {SITE}}}",
        f"audit: {{path: {work / 'audit'}}}",   # never the default under /var/lib
    ]


def _scrape_config(target: str) -> dict[str, Any]:
    # As configs/prometheus/prometheus.yml: the job name the rules use, site and instance.
    return {"job_name": "residency-monitor", "metrics_path": "/metrics",
            "static_configs": [{"targets": [target],
                                "labels": {"site": SITE, "instance": INSTANCE}}]}


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveRun]:
    work = tmp_path_factory.mktemp("grafana-live")
    replay_file = work / "sample-replay.pcap"
    with open_capture(SAMPLE_PATH) as reader:   # foreign MACs: namespace B never answers
        write_pcap(replay_file, reader)
    webhook = WebhookReceiver()
    alertmanager = Alertmanager(work / "alertmanager", webhook.url)
    daemon: DaemonProcess | None = None
    try:
        alertmanager.start()
        with netns_pair() as pair:
            daemon = DaemonProcess(work / "daemon", _daemon_config(pair, work, alertmanager.url))
            daemon.start()
            with running_prometheus(work / "prometheus", [_scrape_config(daemon.target)],
                                    rule_files=[RULES], interval=f"{SCRAPE_S}s") as prom:
                prom.wait_for(f'up{{instance="{INSTANCE}"}} == 1', timeout=20)
                start = time.time() - 2
                for n in (1, 2):   # the second makes every counter increase, not just appear
                    pair.replay(replay_file, pps=2000)
                    prom.wait_for(f"sum(residency_flows_total) >= {n * SAMPLE_FLOWS}",
                                  timeout=30)
                prom.wait_for('ALERTS{alertname="ResidencyViolationsDetected", '
                              'alertstate="firing"}', timeout=20)
                prom.wait_for("sum(residency_alerts_failed_total) > 0", timeout=20)
                time.sleep(3 * SCRAPE_S)         # a few scrapes after the last change
                with urllib.request.urlopen(f"http://{daemon.target}/metrics",
                                            timeout=5) as r:
                    scrape = r.read().decode()
                zones = prom.api("label/network_zone/values",
                                 **{"match[]": "residency_violations_total"})
                yield LiveRun(prom, scrape, start, time.time(), {
                    "site": regex_escape(SITE), "instance": regex_escape(INSTANCE),
                    "network_zone": regex_escape(sorted(zones)[0])})
    finally:
        if daemon is not None:
            daemon.kill()   # a refused Alertmanager would hold a clean stop for 5 s
        alertmanager.stop()
        webhook.close()
        shutil.rmtree(work, ignore_errors=True)


def test_the_daemon_exposes_every_metric_the_dashboard_and_rules_use(live: LiveRun) -> None:
    exposed = {s.name for fam in text_string_to_metric_families(live.scrape)
               for s in fam.samples}
    exprs = [(str(q), grafana_substitute(q.expr, ALL_SELECTED, live.times()))
             for q in dashboard_queries(load_dashboard())]
    exprs += [(f"rule {name}", expr) for name, expr in rule_expressions()]
    for where, expr in exprs:
        missing = {metric_name(s) for s in selectors(expr)} - exposed - PROMETHEUS_SERIES
        assert not missing, f"{where}: not in the daemon's scrape: {missing}"


def test_variable_queries_return_values(live: LiveRun) -> None:
    for v in variables(load_dashboard()).values():
        if v["type"] != "query":
            continue
        m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", v["query"])
        assert m, v["query"]
        series = grafana_substitute(m.group(1), ALL_SELECTED, live.times())
        values = live.prom.api(f"label/{m.group(2)}/values", **{"match[]": series},
                               start=f"{live.start:.3f}", end=f"{live.end:.3f}")
        assert values, f"variable {v['name']}: {v['query']} has no values"


@pytest.mark.parametrize("selection", ["all", "one"])
def test_every_dashboard_query_returns_data(live: LiveRun, selection: str) -> None:
    chosen = ALL_SELECTED if selection == "all" else live.selected
    problems = []
    queries = dashboard_queries(load_dashboard())
    for q in queries:
        expr = grafana_substitute(q.expr, chosen, live.times())
        try:
            data = live.run(expr, q.instant)
        except AssertionError as e:      # Prometheus refused it: the error says why
            problems.append(f"{q}: {e}")
            continue
        # Each selector on its own: a 0 fallback (`or on() vector(0)`) must not hide a typo.
        empty = [s for s in selectors(expr) if not live.run(s, instant=True)["result"]]
        if empty:
            problems.append(f"{q}: selectors match no series: {empty}")
        if not any(True for _ in finite_values(data)):
            problems.append(f"{q} ({'instant' if q.instant else 'range'}) has no data:\n"
                            f"  {expr}")
    assert not problems, f"{len(problems)} of {len(queries)} queries:\n" + "\n".join(problems)
    assert len(queries) >= 40


def test_alerting_rule_expressions_run_on_real_series(live: LiveRun) -> None:
    rules = rule_expressions()
    assert len(rules) >= 6
    problems = []
    for name, expr in rules:
        try:
            live.run(expr, instant=True)     # as written: may rightly be empty, must not fail
            if not live.run(with_bool(expr), instant=True)["result"]:
                problems.append(f"rule {name}: no series reach its comparison")
            for s in selectors(expr):
                if not live.run(s, instant=True)["result"]:
                    problems.append(f"rule {name}: selector {s} matches no series")
        except AssertionError as e:
            problems.append(f"rule {name}: {e}")
    assert not problems, "\n".join(problems)


def test_prometheus_evaluates_every_rule_without_error(live: LiveRun) -> None:
    groups = live.prom.api("rules")["groups"]
    rules = [r for g in groups for r in g["rules"]]
    assert {r["name"] for r in rules} == {name for name, _ in rule_expressions()}
    for r in rules:
        assert r["health"] == "ok" and not r.get("lastError"), r
