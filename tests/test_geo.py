"""Geolocation: MaxMind's test databases, databases built by geo/build_test_dbs.py,
overrides, reloads, the embedded RIR fallback and the bench capture's geo table.

MaxMind's test files (../shared/geo) hold made-up data for a few hundred
networks; the expected answers below come from their README and source JSON.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest
from conftest import ROOT, SHARED

from residency_monitor.geo import (
    UNKNOWN,
    GeoConfig,
    GeoError,
    Geolocator,
    GeoResult,
    classify,
    default_database_paths,
    existing_default_databases,
)

GEO_SHARED = SHARED / "geo"
BUILDER = ROOT / "geo" / "build_test_dbs.py"


@pytest.fixture(scope="session")
def geo_dir() -> Path:
    if not (GEO_SHARED / "GeoIP2-Country-Test.mmdb").is_file():
        pytest.skip(f"MaxMind test databases not found at {GEO_SHARED} "
                    "(../shared sits beside the checkout in CI)")
    return GEO_SHARED


@pytest.fixture(scope="session")
def builder() -> ModuleType:
    spec = importlib.util.spec_from_file_location("build_test_dbs", BUILDER)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def make() -> Iterator[Callable[..., Geolocator]]:
    """Geolocator factory that closes every reader at teardown."""
    made: list[Geolocator] = []

    def factory(*databases: Path | str, asn: tuple = (), **kw) -> Geolocator:
        g = Geolocator(GeoConfig(databases=tuple(str(d) for d in databases),
                                 asn_databases=tuple(str(a) for a in asn), **kw))
        made.append(g)
        return g
    yield factory
    for g in made:
        g.close()


@pytest.fixture
def build(builder, tmp_path) -> Callable[..., Path]:
    def factory(kind: str, entries, name: str | None = None, **kw) -> Path:
        out = tmp_path / (name or f"{kind}.mmdb")
        builder.build(kind, entries, out, **kw)
        return out
    return factory


def explained(g: Geolocator, ip: str) -> dict[str, str]:
    return dict(g.explain(ip))


# ---------------------------------------------------------------- MaxMind's test files

def test_country_used_not_registered_country(geo_dir, make):
    g = make(geo_dir / "GeoIP2-Country-Test.mmdb")
    r = g.lookup_str("2.125.160.217")
    assert r == GeoResult("GB", "maxmind", "country")
    assert r.server_location
    assert g.lookup_str("149.101.100.1").country == "US"    # registered in GB
    assert g.lookup_str("81.2.69.142").country == "GB"      # registered in US
    assert g.lookup_str("202.196.224.1").country == "PH"    # represented_country US ignored
    name = f"maxmind {geo_dir / 'GeoIP2-Country-Test.mmdb'}"
    assert explained(g, "2.125.160.217")[name] == "GB (country; registered_country FR)"
    assert explained(g, "74.209.16.1")[name] == "US (country)"


def test_geolite2_country_and_ipv6(geo_dir, make):
    g = make(geo_dir / "GeoLite2-Country-Test.mmdb", embedded=False)
    assert g.lookup_str("67.43.156.1") == GeoResult("BT", "maxmind", "country")
    assert g.lookup_str("2001:218::1") == GeoResult("JP", "maxmind", "country")
    assert g.lookup_str("2001:220::1").country == "KR"
    assert g.lookup(bytes.fromhex("20010218" + "00" * 11 + "01")).country == "JP"


def test_registered_country_only_is_labelled(build, make):
    # None of MaxMind's test records has registered_country without country.
    db = build("country", [("198.51.100.0/24", ":FR"), ("2001:db8::/32", "DE")])
    g = make(db, embedded=False)
    r = g.lookup_str("198.51.100.7")
    assert r == GeoResult("FR", "maxmind", "registered_country")
    assert not r.server_location
    assert explained(g, "198.51.100.7")[f"maxmind {db}"] == \
        "FR (registered_country; no country)"
    assert g.lookup_str("2001:db8::1") == GeoResult("DE", "maxmind", "country")


@pytest.mark.parametrize("name, ip, country", [
    ("GeoIP2-City-Test.mmdb", "214.0.0.1", "SG"),
    ("GeoIP2-City-Test.mmdb", "214.0.1.1", "AU"),
    ("GeoIP2-City-Test.mmdb", "81.2.69.142", "GB"),
    ("GeoIP2-City-Test.mmdb", "2001:218::1", "JP"),
    ("GeoLite2-City-Test.mmdb", "2.125.160.217", "GB"),
    ("GeoLite2-City-Test.mmdb", "2001:220::1", "KR"),
])
def test_city_database_as_country_source(geo_dir, make, name, ip, country):
    g = make(geo_dir / name, embedded=False)
    assert g.lookup_str(ip) == GeoResult(country, "maxmind", "country")
    (st,) = g.status(0.0)
    assert st.kind == "city" and st.database_type.endswith("City")


def test_asn_and_isp_databases(geo_dir, make):
    g = make(asn=(geo_dir / "GeoLite2-ASN-Test.mmdb", geo_dir / "GeoIP2-ISP-Test.mmdb"))
    assert g.lookup_str("1.0.0.1") == GeoResult("AU", "rir", "registry", None,
                                                15169, "Google Inc.")
    assert (g.lookup_str("12.81.96.1").asn, g.lookup_str("12.81.96.1").as_org) == (7018, None)
    assert g.lookup_str("2001:1700::1").asn == 6730
    # only in the ISP file; 8.8.8.8 there has an ISP but no AS number
    assert (g.lookup_str("1.128.0.1").asn, g.lookup_str("1.128.0.1").as_org) == \
        (1221, "Telstra Pty Ltd")
    assert (g.lookup_str("8.8.8.8").asn, g.lookup_str("8.8.8.8").country) == (None, "US")
    lines = explained(g, "8.8.8.8")
    assert lines[f"asn {geo_dir / 'GeoIP2-ISP-Test.mmdb'}"] == \
        "no AS number (isp Level 3 Communications)"
    assert lines[f"asn {geo_dir / 'GeoLite2-ASN-Test.mmdb'}"] == "not found"
    assert [s.kind for s in g.status(0.0)] == ["asn", "isp", "rir"]


def test_absent_addresses_fall_back_to_rir_or_unknown(geo_dir, make):
    db = geo_dir / "GeoIP2-Country-Test.mmdb"
    with_rir, without = make(db), make(db, embedded=False)
    assert with_rir.lookup_str("8.8.8.8") == GeoResult("US", "rir", "registry")
    assert not with_rir.lookup_str("8.8.8.8").server_location
    assert without.lookup_str("8.8.8.8") is UNKNOWN
    for ip in ("10.0.0.1", "172.16.0.1", "192.168.1.1", "100.64.0.1", "127.0.0.1",
               "169.254.1.1", "fc00::1", "fe80::1", "::1", "224.0.0.251", "0.0.0.0"):
        assert with_rir.lookup_str(ip) == GeoResult(None, None, None), ip


def test_broken_data_section_counted_not_raised(geo_dir, make):
    broken = geo_dir / "GeoIP2-City-Test-Broken-Double-Format.mmdb"
    g = make(broken, embedded=False)
    assert g.lookup_str("2001:218::1") is UNKNOWN
    assert g.lookup_str("2001:218::1") is UNKNOWN           # cached: not counted twice
    (st,) = g.status(0.0)
    assert st.lookup_errors == 1 and "bad data" in st.last_lookup_error
    assert st.error is None                                 # the file itself loaded

    # the next source answers instead
    g2 = make(broken, geo_dir / "GeoIP2-Country-Test.mmdb")
    assert g2.lookup_str("81.2.69.142") == GeoResult("GB", "maxmind", "country")
    assert g2.lookup_str("214.0.0.1") == GeoResult("US", "rir", "registry")  # SG in the intact file
    assert g2.status(0.0)[0].lookup_errors == 2
    said = explained(g2, "81.2.69.142")[f"maxmind {broken}"]
    assert said.startswith("error: ") and "bad data" in said
    assert explained(g2, "8.8.8.8")[f"maxmind {broken}"] == "not found"


def test_broken_search_tree_refused_at_start(geo_dir, make):
    path = geo_dir / "MaxMind-DB-test-broken-search-tree-24.mmdb"
    for kw in ({"databases": (str(path),)}, {"asn_databases": (str(path),)}):
        with pytest.raises(GeoError, match="corrupt search tree") as exc:
            Geolocator(GeoConfig(**kw))
        assert str(path) in str(exc.value)


@pytest.mark.parametrize("name, record_size, offset", [
    ("MaxMind-DB-test-mixed-24.mmdb", 24, 0),
    ("GeoIP2-Country-Test.mmdb", 28, 0),
    ("MaxMind-DB-test-mixed-32.mmdb", 32, 4),
])
def test_search_tree_pointer_past_the_end(geo_dir, tmp_path, name, record_size, offset):
    """A record pointing beyond the data section, in every record size."""
    data = bytearray((geo_dir / name).read_bytes())
    data[offset:offset + 3] = b"\xff\xff\xff"   # a huge left (or right, for 32) record
    bad = tmp_path / name
    bad.write_bytes(bytes(data))
    with pytest.raises(GeoError, match="past the end of the data section"):
        Geolocator(GeoConfig(databases=(str(bad),)))


@pytest.mark.parametrize("name, role, match", [
    ("GeoLite2-ASN-Test.mmdb", "databases", "holds AS numbers, not countries"),
    ("GeoIP2-ISP-Test.mmdb", "databases", "holds AS numbers, not countries"),
    ("GeoIP2-Anonymous-IP-Test.mmdb", "databases", "is not a GeoIP2/GeoLite2 Country"),
    ("MaxMind-DB-test-ipv4-24.mmdb", "databases", "database_type 'Test'"),
    ("GeoIP2-Country-Test.mmdb", "asn_databases", "holds no AS numbers"),
    ("README.md", "databases", "cannot be opened"),
    ("no-such-file.mmdb", "databases", "No such file"),
])
def test_unusable_database_is_a_clear_error(geo_dir, name, role, match):
    path = str(geo_dir / name)
    with pytest.raises(GeoError, match=match) as exc:
        Geolocator(GeoConfig(**{role: (path,)}))
    assert path in str(exc.value)


def test_truncated_file_refused_at_start(geo_dir, tmp_path):
    data = (geo_dir / "GeoIP2-Country-Test.mmdb").read_bytes()
    for cut in (0, 100, len(data) // 2, len(data) - 20):
        p = tmp_path / f"cut{cut}.mmdb"
        p.write_bytes(data[:cut])
        with pytest.raises(GeoError, match="cannot be opened"):
            Geolocator(GeoConfig(databases=(str(p),)))


def test_schema_from_metadata_not_file_name(build, make):
    country_named_asn = build("country", [("198.51.100.0/24", "NL")], "GeoLite2-ASN.mmdb")
    assert make(country_named_asn).lookup_str("198.51.100.1").country == "NL"
    asn_named_country = build("asn", [("198.51.100.0/24", "64500")], "GeoLite2-Country.mmdb")
    with pytest.raises(GeoError, match="holds AS numbers"):
        make(asn_named_country)


# ------------------------------------------------------------- built databases

V4, V6 = "198.51.100.0/24", "2001:db8:100::/48"


@pytest.mark.parametrize("kind, source", [
    ("country", "maxmind"), ("city", "maxmind"), ("dbip", "dbip"), ("ipinfo", "ipinfo"),
])
def test_every_country_schema(build, make, kind, source):
    value = {"ipinfo": "NZ:AS64500:Example Net"}.get(kind, "NZ")
    db = build(kind, [(V4, value), (V6, "MO"), ("203.0.113.0/25", "SG")])
    g = make(db, embedded=False)
    asn = (64500, "Example Net") if kind == "ipinfo" else (None, None)
    assert g.lookup_str("198.51.100.200") == GeoResult("NZ", source, "country", None, *asn)
    assert g.lookup_str("2001:db8:100:ffff::1") == GeoResult("MO", source, "country")
    assert g.lookup_str("203.0.113.1").country == "SG"
    assert g.lookup_str("203.0.113.200") is UNKNOWN
    assert g.lookup_str("2001:db8:101::1") is UNKNOWN
    (st,) = g.status(0.0)
    assert st.kind == kind and st.name == f"{source} {db}"


def test_built_asn_and_isp(build, make):
    asn = build("asn", [(V4, "AS64500:Example Net"), (V6, "64501")])
    isp = build("isp", [("203.0.113.0/24", "64502:Other Net")])
    g = make(asn=(asn, isp), embedded=False)
    assert g.lookup_str("198.51.100.1") == GeoResult(None, None, None, None, 64500,
                                                     "Example Net")
    assert (g.lookup_str("2001:db8:100::1").asn, g.lookup_str("2001:db8:100::1").as_org) == \
        (64501, None)
    assert g.lookup_str("203.0.113.1").as_org == "Other Net"


def test_ipinfo_as_asn_source_and_asn_database_precedence(build, make):
    ipinfo = build("ipinfo", [(V4, "NZ:AS64500:Example Net")])
    asn = build("asn", [(V4, "AS64999:Preferred Name")])
    assert make(asn=(ipinfo,)).lookup_str("198.51.100.1").asn == 64500
    r = make(ipinfo, asn=(asn,)).lookup_str("198.51.100.1")
    assert (r.country, r.source, r.asn, r.as_org) == ("NZ", "ipinfo", 64999, "Preferred Name")


def test_database_order_is_precedence(build, make):
    first = build("dbip", [(V4, "DE")], "first.mmdb")
    second = build("country", [(V4, "FR"), ("203.0.113.0/24", "IT")], "second.mmdb")
    g = make(first, second)
    assert g.lookup_str("198.51.100.1") == GeoResult("DE", "dbip", "country")
    assert g.lookup_str("203.0.113.1") == GeoResult("IT", "maxmind", "country")
    assert [n for n, _ in g.explain("198.51.100.1")] == [
        "override", f"dbip {first}", f"maxmind {second}", "rir (iptocc)", "result"]


def test_builder_cli_network_json_and_bad_value(builder, tmp_path, make):
    pairs = [[V4, "NZ"], [V6, "MO"]]
    (tmp_path / "in.json").write_text(json.dumps(pairs))
    a, b = tmp_path / "a.mmdb", tmp_path / "b.mmdb"
    assert builder.main(["--kind", "country", "--out", str(a),
                         "--network", f"{V4}=NZ", "--network", f"{V6}=MO"]) == 0
    assert builder.main(["--kind", "country", "--out", str(b),
                         "--from-json", str(tmp_path / "in.json"),
                         "--build-epoch", "1700000000"]) == 0
    ga, gb = make(a, embedded=False), make(b, embedded=False)
    for ip in ("198.51.100.1", "2001:db8:100::1", "203.0.113.1"):
        assert ga.lookup_str(ip) == gb.lookup_str(ip)
    assert gb.status(0.0)[0].build_epoch == 1700000000
    assert builder.main(["--kind", "asn", "--out", str(tmp_path / "c.mmdb"),
                         "--network", f"{V4}=not-a-number"]) == 2


def test_bench_truth_geo_table(tmp_path, make, bench):
    """Build a Country database from the bench capture's truth, as the truth tests do."""
    cap, _truth = bench
    truth_path = cap.with_name(cap.name + ".truth.json")
    db = tmp_path / "bench-country.mmdb"
    subprocess.run([sys.executable, str(BUILDER), "--kind", "country", "--out", str(db),
                    "--from-bench-truth", str(truth_path)], check=True, capture_output=True)
    truth = json.loads(truth_path.read_text())
    g = make(db, embedded=False)
    for cidr, cc in truth["geo"]:
        first = cidr.split("/")[0]
        assert g.lookup_str(first) == GeoResult(cc, "maxmind", "country"), cidr
    flows = truth["flows"]
    assert len(flows) > 50
    for f in flows:
        want = None if f["server_country"] == "--" else f["server_country"]
        assert g.lookup_str(f["server_ip"]).country == want, f["server_ip"]


# ---------------------------------------------------------------------- overrides

def test_overrides_longest_prefix_beats_databases(geo_dir, make):
    g = make(geo_dir / "GeoIP2-Country-Test.mmdb",
             asn=(geo_dir / "GeoLite2-ASN-Test.mmdb",),
             overrides=(("2.125.0.0/16", "mo", "company cloud, Macau region"),
                        ("2.125.160.216/30", "HK", None),
                        ("1.0.0.0/24", "SG", "anycast PoP"),
                        ("10.8.0.0/16", "MO", "VPN to the Macau office"),
                        ("2001:218::/48", "JP", "Tokyo DC")))
    assert g.lookup_str("2.125.160.217") == GeoResult("HK", "override", "override")
    assert g.lookup_str("2.125.160.221") == GeoResult("MO", "override", "override",
                                                      "company cloud, Macau region")
    assert g.lookup_str("2.125.1.1").label == "company cloud, Macau region"
    assert g.lookup_str("2.126.0.1") == GeoResult("GB", "rir", "registry")
    assert g.lookup_str("1.0.0.1") == GeoResult("SG", "override", "override", "anycast PoP",
                                                15169, "Google Inc.")
    assert g.lookup_str("10.8.1.1").country == "MO"     # an override may name internal space
    assert g.lookup_str("10.9.1.1") is UNKNOWN
    assert g.lookup_str("2001:218::1").label == "Tokyo DC"
    assert explained(g, "2.125.160.221")["override"] == \
        "MO via 2.125.0.0/16 (company cloud, Macau region)"


@pytest.mark.parametrize("override, match", [
    (("2.125.0.0/33", "MO", None), "2.125.0.0/33"),
    (("not-a-network", "MO", None), "not-a-network"),
    (("2.125.0.0/16", "Macau", None), "two-letter"),
])
def test_bad_override(override, match):
    with pytest.raises(GeoError, match=match):
        Geolocator(GeoConfig(overrides=(override,)))


# ------------------------------------------------------------------------ reloads

def _replace(src: Path, dst: Path) -> None:
    """What geoipupdate does: write beside, then rename over."""
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def test_reload_picks_up_replaced_file_after_interval(build, make, tmp_path):
    live = build("country", [(V4, "DE")], "live.mmdb", build_epoch=1_700_000_000)
    newer = build("city", [(V4, "FR")], "newer.mmdb", build_epoch=1_700_100_000)
    g = make(live, reload_check_interval=60.0)
    assert g.lookup_str("198.51.100.1").country == "DE"
    assert g.maybe_reload(1000.0) == []                 # first check: unchanged
    _replace(newer, live)
    assert g.maybe_reload(1030.0) == []                 # inside the interval: not looked at
    assert g.lookup_str("198.51.100.1").country == "DE"
    assert g.cache_len == 1
    msgs = g.maybe_reload(1061.0)
    assert len(msgs) == 1 and msgs[0].startswith(f"reloaded maxmind {live}: GeoIP2-City")
    assert g.cache_len == 0                             # cache invalidated
    assert g.lookup_str("198.51.100.1") == GeoResult("FR", "maxmind", "country")
    st = g.status(1_700_100_500.0)[0]
    assert (st.kind, st.build_epoch, st.age_seconds, st.error) == \
        ("city", 1_700_100_000, 500.0, None)
    assert g.maybe_reload(1200.0) == []                 # nothing changed since


def test_reload_failure_keeps_previous_database(build, make, tmp_path, geo_dir):
    live = build("country", [(V4, "DE")], "live.mmdb", build_epoch=1_700_000_000)
    g = make(live, reload_check_interval=10.0)
    assert g.lookup_str("198.51.100.1").country == "DE"
    cut = tmp_path / "cut.mmdb"
    cut.write_bytes(live.read_bytes()[:100])
    _replace(cut, live)
    msgs = g.maybe_reload(0.0)
    assert len(msgs) == 1 and msgs[0].startswith(f"could not reload geolocation database {live}")
    assert "still using GeoIP2-Country built 2023-11-14 22:13 UTC" in msgs[0]
    assert g.lookup_str("198.51.100.1").country == "DE"
    st = g.status(1_700_000_100.0)[0]
    assert "cannot be opened" in st.error and st.age_seconds == 100.0
    assert g.maybe_reload(20.0) == []                   # same bad file: said once
    again = g.reload()                                  # asked: said again
    assert len(again) == 1 and "could not reload" in again[0]

    _replace(geo_dir / "GeoLite2-ASN-Test.mmdb", live)  # wrong type
    assert "holds AS numbers" in g.maybe_reload(40.0)[0]
    os.remove(live)                                     # missing
    assert "No such file" in g.maybe_reload(60.0)[0]
    assert g.lookup_str("198.51.100.1").country == "DE"

    good = build("country", [(V4, "AT")], "good.mmdb", build_epoch=1_700_000_500)
    _replace(good, live)
    assert g.maybe_reload(80.0)[0].startswith("reloaded")
    st = g.status(1_700_000_500.0)[0]
    assert st.error is None and st.build_epoch == 1_700_000_500
    assert g.lookup_str("198.51.100.1").country == "AT"


def test_file_moved_away_and_back(build, make, tmp_path):
    live = build("country", [(V4, "DE")], "live.mmdb")
    g = make(live, reload_check_interval=1.0)
    aside = tmp_path / "aside.mmdb"
    os.rename(live, aside)
    assert "No such file" in g.maybe_reload(0.0)[0]
    assert g.status(0.0)[0].error
    os.rename(aside, live)                              # same inode, mtime and size
    assert g.maybe_reload(2.0) == [f"maxmind {live}: the loaded file is back in place"]
    assert g.status(0.0)[0].error is None
    assert g.lookup_str("198.51.100.1").country == "DE"


def test_explicit_reload_and_clock_going_back(build, make):
    live = build("country", [(V4, "DE")], "live.mmdb")
    g = make(live, reload_check_interval=60.0)
    g.lookup_str("198.51.100.1")
    msgs = g.reload()
    assert len(msgs) == 1 and msgs[0].startswith(f"reloaded maxmind {live}: GeoIP2-Country built ")
    assert g.cache_len == 0
    assert g.lookup_str("198.51.100.1").country == "DE"
    assert g.maybe_reload(5000.0) == []
    _replace(build("country", [(V4, "PL")], "pl.mmdb"), live)
    assert g.maybe_reload(100.0)                        # clock went back: checks at once
    assert g.lookup_str("198.51.100.1").country == "PL"


# --------------------------------------------------------------- embedded RIR data

@pytest.mark.parametrize("ip, country", [
    ("8.8.8.8", "US"), ("202.175.80.41", "MO"), ("1.1.1.1", "AU"),
    ("2001:4860:4860::8888", "US"),
])
def test_rir_fallback(make, ip, country):
    g = make()
    r = g.lookup_str(ip)
    assert r == GeoResult(country, "rir", "registry")
    assert not r.server_location
    assert explained(g, ip)["rir (iptocc)"] == f"{country}, registry"
    (st,) = g.status(0.0)
    assert st.kind == "rir" and st.database_type.startswith("iptocc")


def test_rir_disabled(make):
    g = make(embedded=False)
    assert g.lookup_str("8.8.8.8") is UNKNOWN
    assert explained(g, "8.8.8.8")["rir (iptocc)"] == "disabled"
    assert g.status(0.0) == []


# ------------------------------------------------------------ explain, cache, API

def test_explain_lists_every_source(geo_dir, make):
    country = geo_dir / "GeoLite2-City-Test.mmdb"
    asn = geo_dir / "GeoLite2-ASN-Test.mmdb"
    g = make(country, asn=(asn,), overrides=(("203.0.113.0/24", "MO", None),))
    assert g.explain("2.125.160.217") == [
        ("override", "no match"),
        (f"maxmind {country}", "GB (country; registered_country FR)"),
        (f"asn {asn}", "not found"),
        ("rir (iptocc)", "GB, registry"),
        ("result", "GB via maxmind (country)"),
    ]
    assert g.explain("1.0.0.1")[2:] == [
        (f"asn {asn}", "AS15169 Google Inc."),
        ("rir (iptocc)", "AU, registry"),
        ("result", "AU via rir (registry), AS15169 Google Inc."),
    ]
    lines = explained(g, "10.1.2.3")
    assert lines["address"].startswith("internal") and lines["result"] == "unknown"


def test_explain_ipinfo(build, make):
    db = build("ipinfo", [(V4, "NZ:AS64500:Example Net")])
    assert explained(make(db), "198.51.100.1")[f"ipinfo {db}"] == \
        "NZ (country_code; AS64500 Example Net)"


def test_cache_bounded_and_results_shared(geo_dir, make):
    g = make(geo_dir / "GeoIP2-Country-Test.mmdb", cache_size=4)
    ips = [f"81.2.69.{i}" for i in range(142, 144)] + [f"8.8.{i}.1" for i in range(8)]
    first = [g.lookup_str(ip) for ip in ips]
    assert g.cache_len <= 4
    assert [g.lookup_str(ip) for ip in ips] == first
    assert g.lookup_str("8.8.0.1") is g.lookup_str("8.8.1.1")   # interned


def test_packed_lookup_forms(geo_dir, make):
    g = make(geo_dir / "GeoIP2-Country-Test.mmdb")
    v4 = bytes([2, 125, 160, 217])
    assert g.lookup(v4) == g.lookup_str("::ffff:2.125.160.217") == g.lookup_str("2.125.160.217")
    with pytest.raises(ValueError):
        g.lookup(b"\x01\x02\x03")
    with pytest.raises(ValueError):
        g.lookup_str("not an address")


def test_result_is_frozen_and_slotted():
    r = GeoResult("GB", "maxmind", "country")
    with pytest.raises(AttributeError):
        r.country = "FR"  # type: ignore[misc]
    assert not hasattr(r, "__dict__")


@pytest.mark.parametrize("database_type, kind", [
    ("GeoIP2-Country", "country"), ("GeoLite2-Country", "country"),
    ("GeoIP2-City", "city"), ("GeoLite2-City", "city"), ("GeoIP2-Enterprise", "city"),
    ("DBIP-Country-Lite", "dbip"), ("DBIP-City-Lite", "dbip"),
    ("DBIP-ASN-Lite (compat=GeoLite2-ASN)", "asn"),
    ("ipinfo ipinfo_lite.mmdb", "ipinfo"), ("ipinfo country_asn.mmdb", "ipinfo"),
    ("GeoLite2-ASN", "asn"), ("GeoIP2-ISP", "isp"),
    ("GeoIP2-Anonymous-IP", None), ("GeoIP2-Connection-Type", None), ("Test", None),
])
def test_classify(database_type, kind):
    assert classify(database_type) == kind


def test_default_database_paths(tmp_path):
    paths = default_database_paths()
    assert paths.country[0] == "/var/lib/GeoIP/GeoIP2-Country.mmdb"
    for f in ("GeoLite2-Country.mmdb", "GeoLite2-City.mmdb", "GeoIP2-City.mmdb",
              "dbip-country-lite.mmdb", "ipinfo_lite.mmdb"):
        assert f"/var/lib/GeoIP/{f}" in paths.country and f"/usr/share/GeoIP/{f}" in paths.country
    assert paths.asn == ("/var/lib/GeoIP/GeoLite2-ASN.mmdb", "/usr/share/GeoIP/GeoLite2-ASN.mmdb")

    new, old = tmp_path / "new", tmp_path / "old"
    new.mkdir()
    old.mkdir()
    for d, f in ((new, "GeoLite2-City.mmdb"), (old, "GeoLite2-City.mmdb"),
                 (old, "GeoIP2-Country.mmdb"), (old, "GeoLite2-ASN.mmdb")):
        (d / f).write_bytes(b"")
    found = existing_default_databases((str(new), str(old)))
    assert found.country == (str(old / "GeoIP2-Country.mmdb"), str(new / "GeoLite2-City.mmdb"))
    assert found.asn == (str(old / "GeoLite2-ASN.mmdb"),)
