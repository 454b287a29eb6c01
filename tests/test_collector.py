"""The collector: joining directions, choosing the client, judging what flow export shows."""

from __future__ import annotations

import socket
import struct

import pytest
from test_netflow import A, B, fields, flowset, ipfix, ipfix_set, v9, v9_record, v9_template

from residency_monitor import netflow as nf
from residency_monitor.collector import (
    FlowExportCollector,
    FlowExportInput,
    Source,
    parse_source,
)
from residency_monitor.geo import GeoConfig, Geolocator
from residency_monitor.networks import DEFAULT_INTERNAL, NetworkSet
from residency_monitor.policy import default_policy
from residency_monitor.records import FlowRecord
from residency_monitor.residency import Residency


def collect(*datagrams: bytes, window: float = 2.0, judge: bool = False,
            flush: bool = True) -> list[FlowRecord]:
    out: list[FlowRecord] = []
    enrich = Residency(default_policy(), Geolocator(GeoConfig()),
                       NetworkSet(DEFAULT_INTERNAL)) if judge else None
    c = FlowExportCollector(out.append, enrich, join_window=window)
    for i, d in enumerate(datagrams):
        c.feed(d, "10.0.0.1", float(i))
    if flush:
        c.flush()
    return out


def test_two_directions_become_one_record():
    fwd = v9_record(packets=10, octets=4000, flags=0x1B)
    rev = v9_record(src=B, dst=A, sport=443, dport=51000, packets=8, octets=9000, flags=0x13)
    [r] = collect(v9([v9_template(), flowset(256, fwd)]), v9([flowset(256, rev)]))
    assert (r.client_ip, r.client_port, r.server_ip, r.server_port) == (
        "192.168.1.10", 51000, "13.107.42.14", 443)
    assert (r.packets_out, r.packets_in, r.bytes_out, r.bytes_in) == (10, 8, 4000, 9000)
    assert (r.tcp_flags_out, r.tcp_flags_in, r.direction, r.source) == (
        "FSPA", "FSA", "outbound", "netflow_v9")
    assert r.client_from == "port_heuristic" and r.final and r.app == "unknown"


def test_the_earlier_start_of_a_tcp_pair_sent_the_syn():
    # both ports ephemeral: the direction that started first is the client's
    fwd = v9_record(sport=40000, dport=50000, first=90_000)
    rev = v9_record(src=B, dst=A, sport=50000, dport=40000, first=90_020)
    [r] = collect(v9([v9_template(), flowset(256, rev + fwd)]))
    assert (r.client_port, r.client_from) == (40000, "tcp_syn")


def test_a_direction_alone_is_reported_after_the_window():
    out: list[FlowRecord] = []
    c = FlowExportCollector(out.append, join_window=2.0)
    syn = v9_record(flags=0x02, packets=3, octets=180)
    c.feed(v9([v9_template(), flowset(256, syn)]), "r", 100.0)
    c.advance(101.9)
    assert out == []
    c.advance(102.0)
    [r] = out
    assert (r.packets_out, r.packets_in, r.client_from, r.tcp_flags_out) == (3, 0, "tcp_syn", "S")


def test_syn_ack_alone_is_the_server_side():
    synack = v9_record(src=B, dst=A, sport=443, dport=51000, flags=0x12)
    [r] = collect(v9([v9_template(), flowset(256, synack)]))
    assert (r.client_ip, r.server_port, r.packets_in, r.packets_out) == (
        "192.168.1.10", 443, 10, 0)


def test_the_same_tuple_much_later_is_not_joined():
    fwd = v9_record(first=10_000, last=11_000)
    rev = v9_record(src=B, dst=A, sport=443, dport=51000, first=90_000, last=91_000)
    assert len(collect(v9([v9_template(), flowset(256, fwd + rev)]))) == 2


def test_policy_judges_residency_and_says_transport_was_not_judged():
    us = v9_record()                                    # 13.107.42.14: US
    mo = v9_record(dst=socket.inet_aton("202.175.80.41"))   # Macau: permitted
    recs = collect(v9([v9_template(), flowset(256, us + mo)]), judge=True)
    by_country = {r.dst_country: r for r in recs}
    assert by_country["US"].verdict == "violation" and by_country["US"].violations == [
        "residency"]
    assert by_country["US"].detected_at == by_country["US"].ts_start
    mo_rec = by_country["MO"]
    assert mo_rec.verdict == "compliant" and mo_rec.violations == []
    assert "transport security not judged" in (mo_rec.explanation or "")
    assert mo_rec.notes == ["flow export (netflow_v9): no TLS metadata; transport security "
                            "not judged"]


def test_sampling_is_noted():
    opt = flowset(1, struct.pack("!HHH", 257, 4, 8) + fields((1, 4), (34, 4), (35, 1)))
    data = flowset(257, struct.pack("!IIB", 0, 100, 2))
    [r] = collect(v9([opt, data, v9_template(), flowset(256, v9_record())]))
    assert r.packets_out == 1000 and "sampled 1 in 100" in r.notes[1]


def test_dns_by_port_is_judged_on_residency_only():
    q = v9_record(sport=53000, dport=53, proto=17)
    [r] = collect(v9([v9_template(), flowset(256, q)]), judge=True)
    assert r.app == "dns" and r.violations == ["residency"]


def test_biflow_record_is_one_record():
    spec = fields((8, 4), (12, 4), (7, 2), (11, 2), (4, 1), (2, 4), (1, 4)) \
        + struct.pack("!HHI", 0x8000 | 2, 4, nf.REVERSE_PEN) \
        + struct.pack("!HHI", 0x8000 | 1, 4, nf.REVERSE_PEN) + fields((239, 1))
    tmpl = ipfix_set(2, struct.pack("!HH", 600, 10) + spec)
    rec = struct.pack("!4s4sHHBIIIIB", B, A, 443, 51000, 6, 3, 300, 2, 900, 2)  # reverse init
    [r] = collect(ipfix([tmpl, ipfix_set(600, rec)]))
    assert (r.client_ip, r.client_port, r.packets_out, r.bytes_out, r.packets_in) == (
        "192.168.1.10", 51000, 2, 900, 3)


@pytest.mark.parametrize("text,want", [
    ("ipfix://0.0.0.0:4739", Source("ipfix", "0.0.0.0", 4739)),
    ("ipfix://127.0.0.1", Source("ipfix", "127.0.0.1", 4739)),
    ("netflow://[::]:2056", Source("netflow", "::", 2056)),
    ("netflow://10.0.0.1", Source("netflow", "10.0.0.1", 2055)),
])
def test_parse_source(text, want):
    assert parse_source(text) == want and parse_source(want.url) == want


@pytest.mark.parametrize("text", ["sflow://0.0.0.0:6343", "ipfix://", "ipfix://host.example:1",
                                  "ipfix://1.2.3.4:0", "netflow://[::1:2055", "ipfix:/x"])
def test_parse_source_refuses(text):
    with pytest.raises(ValueError):
        parse_source(text)


def test_input_reads_its_udp_socket():
    out: list[FlowRecord] = []
    inp = FlowExportInput((Source("ipfix", "127.0.0.1", 0),),
                          FlowExportCollector(out.append))
    inp.open()
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(v9([v9_template(), flowset(256, v9_record())]),
                     ("127.0.0.1", inp.ports[0]))
        assert inp.read(1.0) == [] and out == []     # waiting for its other direction
        assert inp.interfaces == ("ipfix://127.0.0.1:0",) and inp.stats() == {}
    finally:
        inp.close()
    assert len(out) == 1 and inp.socks == []


def test_input_that_cannot_listen_is_a_capture_error():
    from residency_monitor.capture.live import LiveCaptureError

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        inp = FlowExportInput((Source("ipfix", "127.0.0.1", port),),
                              FlowExportCollector(lambda r: None))
        with pytest.raises(LiveCaptureError, match="cannot listen"):
            inp.open()


def test_config_sources_are_validated_with_their_lines():
    from residency_monitor.config import parse_config
    from residency_monitor.yamlcheck import ConfigError

    ok = parse_config("sources: [ipfix://0.0.0.0:4739, 'netflow://[::]:2055']\n")
    assert ok.sources == ("ipfix://0.0.0.0:4739", "netflow://[::]:2055")
    with pytest.raises(ConfigError) as err:
        parse_config("sources:\n  - ipfix://0.0.0.0:4739\n  - sflow://0.0.0.0:6343\n",
                     "site.yaml")
    assert str(err.value).startswith("site.yaml:3: sources[1]: 'sflow://0.0.0.0:6343'")


def test_run_refuses_a_bad_source():
    from click.testing import CliRunner

    from residency_monitor.cli import main

    result = CliRunner().invoke(main, ["run", "--source", "ipfix://0.0.0.0:99999"])
    assert result.exit_code == 2 and "--source" in result.output
