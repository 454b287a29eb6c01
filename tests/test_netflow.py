"""NetFlow v5, v9 and IPFIX decoding, from hand-built datagrams (RFC 3954, RFC 7011).

The datagrams are built here field by field from the RFCs' layouts, so a
test names the exact bytes it feeds; ``test_collector_e2e.py`` checks the
decoder against a real exporter (softflowd).
"""

from __future__ import annotations

import socket
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from residency_monitor import netflow as nf
from residency_monitor.netflow import FlowDecoder
from residency_monitor.wire import ParseError

A = socket.inet_aton("192.168.1.10")
B = socket.inet_aton("13.107.42.14")
A6 = socket.inet_pton(socket.AF_INET6, "fd00::10")
B6 = socket.inet_pton(socket.AF_INET6, "2a01:238:20a:202::10")
EXPORT = 1_772_442_000        # 2026-03-02 09:00:00 UTC


# -- builders -------------------------------------------------------------------------------

def v5(records: list[tuple], uptime: int = 100_000, sampling: int = 0) -> bytes:
    """records: (src, dst, sport, dport, proto, packets, octets, first_ms, last_ms, flags)."""
    head = struct.pack("!HHIIIIBBH", 5, len(records), uptime, EXPORT, 500_000_000, 1, 0, 0,
                       sampling)
    body = b"".join(struct.pack("!4s4s4sHHIIIIHHBBBBHHBBH", s, d, b"\0" * 4, 1, 2, pk, by,
                                first, last, sp, dp, 0, fl, pr, 0, 0, 0, 0, 0, 0)
                    for s, d, sp, dp, pr, pk, by, first, last, fl in records)
    return head + body


def v9(flowsets: list[bytes], uptime: int = 100_000, source_id: int = 7) -> bytes:
    return struct.pack("!HHIIII", 9, len(flowsets), uptime, EXPORT, 1, source_id) \
        + b"".join(flowsets)


def flowset(set_id: int, body: bytes, pad: bool = True) -> bytes:
    if pad:
        body += b"\0" * (-len(body) % 4)
    return struct.pack("!HH", set_id, 4 + len(body)) + body


def fields(*spec: tuple[int, int]) -> bytes:
    return b"".join(struct.pack("!HH", ie, n) for ie, n in spec)


V9_FIELDS = ((8, 4), (12, 4), (7, 2), (11, 2), (4, 1), (6, 1), (2, 4), (1, 4), (22, 4), (21, 4))


def v9_template(tid: int = 256, spec=V9_FIELDS) -> bytes:
    return flowset(0, struct.pack("!HH", tid, len(spec)) + fields(*spec))


def v9_record(src=A, dst=B, sport=51000, dport=443, proto=6, flags=0x1B, packets=10,
              octets=4000, first=90_000, last=99_000) -> bytes:
    return struct.pack("!4s4sHHBBIIII", src, dst, sport, dport, proto, flags, packets, octets,
                       first, last)


def ipfix(sets: list[bytes], domain: int = 1, export: int = EXPORT) -> bytes:
    body = b"".join(sets)
    return struct.pack("!HHIII", 10, 16 + len(body), export, 1, domain) + body


def ipfix_set(set_id: int, body: bytes) -> bytes:
    return struct.pack("!HH", set_id, 4 + len(body)) + body


IPFIX_FIELDS = ((27, 16), (28, 16), (7, 2), (11, 2), (4, 1), (6, 1), (2, 8), (1, 8),
                (152, 8), (153, 8))


def ipfix_template(tid: int = 300, spec=IPFIX_FIELDS) -> bytes:
    return ipfix_set(2, struct.pack("!HH", tid, len(spec)) + fields(*spec))


def ipfix_record(src=A6, dst=B6, sport=51000, dport=443, proto=6, flags=0x1B, packets=10,
                 octets=4000, start_ms=EXPORT * 1000 - 9000, end_ms=EXPORT * 1000) -> bytes:
    return struct.pack("!16s16sHHBBQQQQ", src, dst, sport, dport, proto, flags, packets, octets,
                       start_ms, end_ms)


# -- NetFlow v5 -----------------------------------------------------------------------------

def test_v5_records_and_times():
    d = FlowDecoder()
    out = d.feed(v5([(A, B, 51000, 443, 6, 10, 4000, 90_000, 99_000, 0x1B),
                     (B, A, 443, 51000, 6, 8, 9000, 90_010, 99_000, 0x1B)]), "10.0.0.1", 0)
    assert [(f.sport, f.dport, f.packets, f.octets, f.tcp_flags) for f in out] == [
        (51000, 443, 10, 4000, 0x1B), (443, 51000, 8, 9000, 0x1B)]
    f = out[0]
    assert (f.src, f.dst, f.proto, f.protocol, f.exporter, f.sampling) == (
        A, B, 6, "netflow_v5", "10.0.0.1", 1)
    # sysUptime 100 s at export 09:00:00.5: the flow ran from 10 s to 1 s before it
    assert f.start == pytest.approx(EXPORT + 0.5 - 10) and f.end == pytest.approx(EXPORT - 0.5)
    assert (f.ingress_if, f.egress_if) == (1, 2)
    assert d.stats["netflow_v5", "records"] == 2


def test_v5_header_sampling_interval_scales_counts():
    # top two bits: mode (01 = deterministic); the low 14 bits: 1 in 100
    out = FlowDecoder().feed(v5([(A, B, 1, 2, 17, 3, 300, 0, 0, 0)], sampling=0x4000 | 100),
                             "r", 0)
    assert (out[0].packets, out[0].octets, out[0].sampling) == (300, 30000, 100)


def test_v5_uptime_wraps():
    # the record started before the 32-bit millisecond uptime wrapped
    out = FlowDecoder().feed(v5([(A, B, 1, 2, 17, 1, 60, 0xFFFFFFFF - 999, 500, 0)],
                                uptime=1000), "r", 0)
    assert out[0].start == pytest.approx(EXPORT + 0.5 - 2.0)


@pytest.mark.parametrize("data", [v5([])[:24], v5([(A, B, 1, 2, 6, 1, 40, 0, 0, 2)])[:60],
                                  b"\0\x05\0\x01" + b"\0" * 10])
def test_v5_malformed_is_counted(data):
    d = FlowDecoder()
    assert d.feed(data, "r", 0) == []
    assert d.stats["netflow_v5", "malformed"] == 1


# -- NetFlow v9 -----------------------------------------------------------------------------

def test_v9_template_then_data_in_one_datagram():
    d = FlowDecoder()
    data = v9([v9_template(), flowset(256, v9_record() + v9_record(sport=51001))])
    out = d.feed(data, "10.0.0.1", 0)
    assert [(f.sport, f.packets, f.octets) for f in out] == [(51000, 10, 4000), (51001, 10, 4000)]
    assert out[0].start == pytest.approx(EXPORT - 10) and out[0].end == pytest.approx(EXPORT - 1)
    assert (out[0].domain, out[0].protocol) == (7, "netflow_v9")
    assert d.stats["netflow_v9", "templates"] == 1


def test_v9_padding_after_records_is_not_a_record():
    # 30-byte records, the FlowSet padded to 64 bytes: 2 records and 2 bytes of padding
    out = FlowDecoder().feed(v9([v9_template(), flowset(256, v9_record() * 2)]), "r", 0)
    assert len(out) == 2


def test_v9_data_before_template_is_held_then_decoded():
    d = FlowDecoder()
    assert d.feed(v9([flowset(256, v9_record())]), "r", 10.0) == []
    assert len(d.held) == 1
    out = d.feed(v9([v9_template()]), "r", 11.0)
    assert [f.packets for f in out] == [10]
    assert not d.held and d.stats["netflow_v9", "no_template"] == 0


def test_v9_data_whose_template_never_comes_is_counted():
    d = FlowDecoder(hold_seconds=5)
    d.feed(v9([flowset(256, v9_record())]), "r", 10.0)
    d.expire(14.9)
    assert d.stats["netflow_v9", "no_template"] == 0
    d.expire(15.0)
    assert d.stats["netflow_v9", "no_template"] == 1 and not d.held and d.held_bytes == 0


def test_held_sets_are_bounded():
    d = FlowDecoder(max_held_sets=3)
    for i in range(10):
        d.feed(v9([flowset(256 + i, v9_record())]), "r", 0.0)
    assert len(d.held) == 3 and d.stats["netflow_v9", "no_template"] == 7


def test_templates_are_per_exporter_and_source_id():
    d = FlowDecoder()
    d.feed(v9([v9_template()], source_id=1), "r1", 0)
    # the same template id from another source id, and from another exporter: unknown there
    assert d.feed(v9([flowset(256, v9_record())], source_id=2), "r1", 0) == []
    assert d.feed(v9([flowset(256, v9_record())], source_id=1), "r2", 0) == []
    assert len(d.feed(v9([flowset(256, v9_record())], source_id=1), "r1", 0)) == 1


def test_v9_template_replaced():
    d = FlowDecoder()
    d.feed(v9([v9_template()]), "r", 0)
    swapped = ((12, 4), (8, 4)) + V9_FIELDS[2:]      # destination first now
    out = d.feed(v9([v9_template(spec=swapped), flowset(256, v9_record())]), "r", 0)
    assert (out[0].src, out[0].dst) == (B, A)


def test_v9_options_sampling_applies_to_later_records():
    d = FlowDecoder()
    # options template 257: scope System (type 1, 4 bytes); options SAMPLING_INTERVAL (34, 4)
    # and SAMPLING_ALGORITHM (35, 1)
    opt = flowset(1, struct.pack("!HHH", 257, 4, 8) + fields((1, 4), (34, 4), (35, 1)))
    data = flowset(257, struct.pack("!IIB", 0, 64, 2))
    out = d.feed(v9([opt, data, v9_template(), flowset(256, v9_record())]), "r", 0)
    assert (out[0].packets, out[0].octets, out[0].sampling) == (640, 256000, 64)
    assert d.stats["netflow_v9", "sampled"] == 1 and d.stats["netflow_v9", "options_records"] == 1


def test_v9_sampler_ids_pick_their_own_rate():
    d = FlowDecoder()
    # options: FLOW_SAMPLER_ID (48, 1) with FLOW_SAMPLER_RANDOM_INTERVAL (50, 4), two samplers
    opt = flowset(1, struct.pack("!HHH", 257, 4, 8) + fields((2, 4), (48, 1), (50, 4)))
    data = flowset(257, struct.pack("!IBI", 3, 1, 10) + struct.pack("!IBI", 3, 2, 1000))
    spec = V9_FIELDS + ((48, 1),)
    rec = v9_record() + b"\x02"
    out = d.feed(v9([opt, data, v9_template(spec=spec), flowset(256, rec)]), "r", 0)
    assert out[0].sampling == 1000 and out[0].packets == 10_000


@pytest.mark.parametrize("bad", [
    flowset(256, b"\0" * 30)[:2] + b"\x01\x00",       # length beyond the datagram
    struct.pack("!HH", 256, 2),                        # length below the header's own 4
    flowset(0, struct.pack("!HH", 258, 5) + fields((8, 4))),   # template cut in its fields
])
def test_v9_malformed_flowset_keeps_earlier_records(bad):
    d = FlowDecoder()
    out = d.feed(v9([v9_template(), flowset(256, v9_record()), bad]), "r", 0)
    assert len(out) == 1
    assert d.stats["netflow_v9", "malformed"] == 1 and d.last_error


def test_v9_template_id_below_256_is_refused():
    d = FlowDecoder()
    d.feed(v9([v9_template(tid=100)]), "r", 0)
    assert d.stats["netflow_v9", "malformed"] == 1 and not d.templates


def test_non_ip_templates_give_no_flows():
    # a template of MAC addresses and counters only: decoded, not an IP flow
    d = FlowDecoder()
    out = d.feed(v9([v9_template(spec=((56, 6), (80, 6), (2, 4))),
                     flowset(256, b"\1" * 16)]), "r", 0)
    assert out == [] and d.stats["netflow_v9", "malformed"] == 0


# -- IPFIX ----------------------------------------------------------------------------------

def test_ipfix_ipv6_with_millisecond_times():
    d = FlowDecoder()
    out = d.feed(ipfix([ipfix_template(), ipfix_set(300, ipfix_record())], domain=9), "r", 0)
    f = out[0]
    assert (f.src, f.dst, f.sport, f.dport, f.packets, f.octets, f.domain) == (
        A6, B6, 51000, 443, 10, 4000, 9)
    assert (f.start, f.end, f.timing) == (EXPORT - 9.0, float(EXPORT), "exact")


def test_ipfix_variable_length_and_enterprise_fields_are_walked():
    # interfaceName (82) variable length, then an enterprise field, then the addresses
    spec = struct.pack("!HH", 82, 65535) + struct.pack("!HHI", 0x8000 | 7, 4, 9999) \
        + fields((8, 4), (12, 4), (7, 2), (11, 2), (4, 1), (2, 4), (1, 4), (150, 4), (151, 4))
    tmpl = ipfix_set(2, struct.pack("!HH", 400, 11) + spec)
    tail = struct.pack("!4s4sHHBIIII", A, B, 5353, 5353, 17, 2, 200, EXPORT - 5, EXPORT)
    short = b"\x04eth0" + b"ABCD" + tail
    long_name = b"x" * 300
    long_ = b"\xff" + struct.pack("!H", 300) + long_name + b"ABCD" + tail
    d = FlowDecoder()
    out = d.feed(ipfix([tmpl, ipfix_set(400, short + long_)]), "r", 0)
    assert [(f.sport, f.packets, f.octets, f.start, f.end) for f in out] == [
        (5353, 2, 200, EXPORT - 5.0, float(EXPORT))] * 2
    assert d.templates["r", 1, 400].record_length is None


def test_ipfix_variable_length_overrun_is_malformed():
    spec = struct.pack("!HH", 82, 65535) + fields((8, 4), (12, 4))
    tmpl = ipfix_set(2, struct.pack("!HH", 400, 3) + spec)
    d = FlowDecoder()
    d.feed(ipfix([tmpl, ipfix_set(400, b"\x40" + b"\0" * 10)]), "r", 0)
    assert d.stats["ipfix", "malformed"] == 1


def test_ipfix_withdrawal_removes_the_template():
    d = FlowDecoder(hold_seconds=0)
    d.feed(ipfix([ipfix_template()]), "r", 0)
    d.feed(ipfix([ipfix_set(2, struct.pack("!HH", 300, 0))]), "r", 0)
    assert d.feed(ipfix([ipfix_set(300, ipfix_record())]), "r", 0) == []
    assert d.stats["ipfix", "no_template"] == 1
    # "all data templates" withdrawal (template id = set id 2)
    d.feed(ipfix([ipfix_template(300), ipfix_template(301)]), "r", 0)
    d.feed(ipfix([ipfix_set(2, struct.pack("!HH", 2, 0))]), "r", 0)
    assert not d.templates


def test_ipfix_options_sampling_by_selector_and_default():
    # options template 500: scope observationDomainId (149); selectorId (302),
    # samplingPacketInterval (305) and samplingPacketSpace (306): 1 selected, 9 skipped
    otmpl = ipfix_set(3, struct.pack("!HHH", 500, 4, 1)
                      + fields((149, 4), (302, 2), (305, 4), (306, 4)))
    odata = ipfix_set(500, struct.pack("!IHII", 1, 7, 1, 9))
    spec = IPFIX_FIELDS + ((302, 2),)
    d = FlowDecoder()
    out = d.feed(ipfix([otmpl, odata, ipfix_template(spec=spec),
                        ipfix_set(300, ipfix_record() + b"\0\x07" + ipfix_record() + b"\0\x08")]),
                 "r", 0)
    # selector 7 is 1 in 10; selector 8 was never announced: unsampled
    assert [(f.sampling, f.packets) for f in out] == [(10, 100), (1, 10)]


def test_ipfix_sysuptime_needs_the_exporter_boot_time():
    spec = ((8, 4), (12, 4), (4, 1), (2, 4), (1, 4), (22, 4), (21, 4))
    tmpl = ipfix_template(spec=spec)
    rec = struct.pack("!4s4sBIIII", A, B, 17, 1, 60, 10_000, 12_000)
    d = FlowDecoder()
    # no boot time known: the flow ends at the export, its duration kept
    f = d.feed(ipfix([tmpl, ipfix_set(300, rec)]), "r", 0)[0]
    assert (f.start, f.end, f.timing) == (EXPORT - 2.0, float(EXPORT), "export_time")
    # systemInitTimeMilliseconds (160) in an options record: exact times
    otmpl = ipfix_set(3, struct.pack("!HHH", 501, 2, 1) + fields((149, 4), (160, 8)))
    boot_ms = (EXPORT - 3600) * 1000
    odata = ipfix_set(501, struct.pack("!IQ", 1, boot_ms))
    f = d.feed(ipfix([otmpl, odata, ipfix_set(300, rec)]), "r", 0)[0]
    assert (f.start, f.end, f.timing) == (EXPORT - 3590.0, EXPORT - 3588.0, "exact")


def test_ipfix_biflow_reverse_elements():
    spec = struct.pack("!HH", 8, 4) + struct.pack("!HH", 12, 4) + fields((4, 1), (2, 4), (1, 4)) \
        + struct.pack("!HHI", 0x8000 | 2, 4, nf.REVERSE_PEN) \
        + struct.pack("!HHI", 0x8000 | 1, 4, nf.REVERSE_PEN) + fields((239, 1))
    tmpl = ipfix_set(2, struct.pack("!HH", 600, 8) + spec)
    rec = struct.pack("!4s4sBIIIIB", A, B, 17, 3, 300, 2, 900, 1)
    f = FlowDecoder().feed(ipfix([tmpl, ipfix_set(600, rec)]), "r", 0)[0]
    assert (f.biflow, f.packets, f.octets, f.rev_packets, f.rev_octets, f.biflow_direction) == (
        True, 3, 300, 2, 900, 1)


@pytest.mark.parametrize("mangle", [
    lambda m: m[:2] + struct.pack("!H", len(m) + 1) + m[4:],    # length beyond the datagram
    lambda m: m[:2] + struct.pack("!H", 12) + m[4:],            # length below the header
    lambda m: m + b"\0\0",                                      # stray bytes after the sets
])
def test_ipfix_message_length_must_fit(mangle):
    msg = ipfix([ipfix_template(), ipfix_set(300, ipfix_record())])
    d = FlowDecoder()
    data = mangle(msg)
    if len(data) > len(msg):   # the header says what the message is: trailing bytes are kept
        data = data[:2] + struct.pack("!H", len(data)) + data[4:]
    d.feed(data, "r", 0)
    assert d.stats["ipfix", "malformed"] == 1


def test_unknown_version_is_counted():
    d = FlowDecoder()
    assert d.feed(b"\x00\x07junk", "r", 0) == [] and d.feed(b"", "r", 0) == []
    assert d.stats["unknown", "malformed"] == 2


def test_template_memory_is_bounded():
    d = FlowDecoder(max_templates=10)
    for i in range(50):
        d.feed(ipfix([ipfix_template(300 + i)]), "r", 0)
    assert len(d.templates) == 10 and ("r", 1, 349) in d.templates


def test_compile_template_refusals():
    with pytest.raises(ParseError):
        nf.compile_template(256, [])
    with pytest.raises(ParseError):
        nf.compile_template(256, [nf.Field(8, 3)])        # an IPv4 address of 3 bytes
    with pytest.raises(ParseError):
        nf.compile_template(256, [nf.Field(1, 0)])        # records of no bytes


# -- the contract, fuzzed -------------------------------------------------------------------

SAMPLES = [
    v5([(A, B, 51000, 443, 6, 10, 4000, 90_000, 99_000, 0x1B)]),
    v9([v9_template(), flowset(256, v9_record())]),
    v9([flowset(1, struct.pack("!HHH", 257, 4, 8) + fields((1, 4), (34, 4), (35, 1))),
        flowset(257, struct.pack("!IIB", 0, 64, 2))]),
    ipfix([ipfix_template(), ipfix_set(300, ipfix_record())]),
    ipfix([ipfix_set(2, struct.pack("!HH", 400, 3) + struct.pack("!HH", 82, 65535)
                     + fields((8, 4), (12, 4))), ipfix_set(400, b"\x03abc" + A + B)]),
    ipfix([ipfix_set(3, struct.pack("!HHH", 500, 4, 1)
                     + fields((149, 4), (302, 2), (305, 4), (306, 4))),
           ipfix_set(500, struct.pack("!IHII", 1, 7, 1, 9))]),
]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sample=st.sampled_from(SAMPLES), cut=st.integers(0, 200), tail=st.binary(max_size=64),
       flips=st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=4))
def test_feed_never_raises(sample, cut, tail, flips):
    data = bytearray(sample[:cut] + tail)
    for pos, value in flips:
        if pos < len(data):
            data[pos] = value
    d = FlowDecoder()
    d.feed(bytes(sample), "r", 0)          # templates known, then the damaged datagram
    d.feed(bytes(data), "r", 1)
    d.expire(1e9)


@settings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=120), options=st.booleans())
def test_template_readers_raise_only_parse_error(body, options):
    for parse in (lambda b: nf.parse_ipfix_templates(b, options), nf.parse_v9_templates,
                  nf.parse_v9_options_template):
        try:
            for tid, flds, *scope in parse(body):
                if flds:
                    t = nf.compile_template(tid, flds, scope[0] if scope else 0, options)
                    nf.read_records(body, t)
        except ParseError:
            pass
