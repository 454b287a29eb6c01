"""The daemon's configuration file: the shipped example, defaults, and every error at once."""

from __future__ import annotations

import pytest
from conftest import ROOT

from residency_monitor.config import Config, ConfigError, load_config, parse_config

EXAMPLE = ROOT / "configs" / "residency-monitor.yaml"


def test_the_shipped_example_is_valid():
    cfg = load_config(EXAMPLE)
    assert cfg.capture.interfaces == ("eth0",)
    assert cfg.geo.overrides == (("203.0.113.0/24", "MO", "company cloud, Macau region"),)
    assert cfg.alertmanager.urls == ("http://127.0.0.1:9093",)
    assert cfg.alertmanager.labels == (("site", "macau-office"),)
    assert cfg.metrics.port == 8749 and cfg.flows.udp_idle == 60


def test_no_file_and_an_empty_file_mean_the_defaults():
    assert load_config(None) == Config()
    empty = parse_config("", "empty.yaml")
    assert empty.capture == Config().capture and empty.policy is None


def test_every_error_is_reported_with_line_and_key():
    text = """capture:
  promiscuous: maybe
flows:
  tcp_idle: -5
geo:
  overrides:
    - {network: 10.0.0.0/33, country: mo}
metrics: {port: 99999, tls_cert_file: /x.crt}
alertmanager:
  urls: [ftp://x]
bogus: 1
"""
    with pytest.raises(ConfigError) as err:
        parse_config(text, "c.yaml")
    lines = str(err.value).splitlines()
    assert lines == [
        "c.yaml:2: capture.promiscuous: expected true or false, got text 'maybe'",
        "c.yaml:4: flows.tcp_idle: -5 out of range (1 to 604800)",
        "c.yaml:7: geo.overrides[0].network: bad CIDR '10.0.0.0/33': '10.0.0.0/33' does not "
        "appear to be an IPv4 or IPv6 network",
        "c.yaml:7: geo.overrides[0].country: expected an upper-case ISO country code such as "
        "MO, got 'mo'",
        "c.yaml:8: metrics.port: 99999 out of range (0 to 65535)",
        "c.yaml:8: metrics: tls_cert_file and tls_key_file go together",
        "c.yaml:10: alertmanager.urls[0]: expected an http:// or https:// URL, got 'ftp://x'",
        "c.yaml:11: bogus: unknown key 'bogus'",
    ]


def test_syntax_error_names_the_line(tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text("capture:\n  interfaces: [eth0\n")
    with pytest.raises(ConfigError) as err:
        load_config(bad)
    assert str(err.value).startswith(f"{bad}:") and "syntax" in str(err.value)


def test_unreadable_file(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / "missing.yaml")
    assert "missing.yaml" in str(err.value) and "cannot read" in str(err.value)


def test_audit_section():
    cfg = load_config(EXAMPLE)
    assert cfg.audit.enabled and cfg.audit.path == "/var/lib/residency-monitor/audit"
    assert cfg.audit.retention_days == 2192 and cfg.audit.fsync_interval == 1.0
    assert cfg.audit == Config().audit          # the example documents the defaults
    off = parse_config("audit: {enabled: false, all_flows: true, fsync_interval: 0}\n")
    assert not off.audit.enabled and off.audit.all_flows and off.audit.fsync_interval == 0
    with pytest.raises(ConfigError) as err:
        parse_config("audit:\n  rotate_bytes: 10\n  compress: maybe\n  keyfile: x\n", "c.yaml")
    assert str(err.value).splitlines() == [
        "c.yaml:2: audit.rotate_bytes: 10 out of range (4096 to 1e+12)",
        "c.yaml:3: audit.compress: expected true or false, got text 'maybe'",
        "c.yaml:4: audit.keyfile: unknown key 'keyfile'",
    ]


def test_memory_bounds_are_configurable_and_reach_the_engine():
    from residency_monitor.engine import Engine, EngineConfig

    cfg = load_config(EXAMPLE)
    assert cfg.flows == Config().flows          # the example documents the defaults
    small = parse_config("flows: {max_flows: 5000, reassembly_bytes_per_flow: 8192,\n"
                         "        reassembly_bytes_total: 1048576, datagram_bytes_total: 65536,\n"
                         "        dns_max_addresses: 2000}\n")
    f = small.flows
    assert (f.max_flows, f.reassembly_bytes_per_flow, f.reassembly_bytes_total,
            f.max_reassembly_bytes, f.dns_max_addresses) == (5000, 8192, 1 << 20, 65536, 2000)
    # as the daemon builds its engine: the flows section alone carries every bound
    engine = Engine(EngineConfig(flows=f))
    assert engine.inspection is not None
    assert engine.inspection.cap == 4096 and engine.inspection.budget.limit == 1 << 20
    assert engine.inspection.names.max_entries == 2000


def test_memory_bounds_are_validated():
    text = """flows:
  reassembly_bytes_per_flow: 100
  dns_max_addresses: 0.5
  datagram_bytes_total: yes
flows2: 1
"""
    with pytest.raises(ConfigError) as err:
        parse_config(text, "c.yaml")
    lines = str(err.value).splitlines()
    assert lines[0].startswith("c.yaml:2: flows.reassembly_bytes_per_flow: 100 out of range "
                               "(2048 to ")
    assert lines[1].startswith("c.yaml:3: flows.dns_max_addresses: ")
    assert lines[2].startswith("c.yaml:4: flows.datagram_bytes_total: ")
    assert lines[3].startswith("c.yaml:5: flows2: unknown key 'flows2'")
    with pytest.raises(ConfigError) as err:
        parse_config("flows: {reassembly_bytes_per_flow: 1048576, "
                     "reassembly_bytes_total: 524288}\n", "c.yaml")
    assert str(err.value) == ("c.yaml:1: flows.reassembly_bytes_total: smaller than "
                              "reassembly_bytes_per_flow (1048576): no handshake would fit")
