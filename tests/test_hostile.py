"""Hostile traffic through the whole packet path, and the memory bounds that contain it.

A monitor on a gateway sees whatever the Internet sends. Here:

* every corpus capture corrupted by Wireshark's ``editcap -E`` (real tool,
  fixed seeds) and every frame of real captures cut and corrupted at every
  offset go through :class:`Engine`: nothing raises, every frame is accounted
  for (in a record, as malformed, or as an orphan fragment), and malformed
  frames are counted by the protocol whose header broke;
* the handshake reassembly bound (:class:`~residency_monitor.inspect.HandshakeBudget`)
  holds for any sequence of segments (Hypothesis), gives up the least recently
  grown handshake first, and a flow it gave up on is still judged;
* the floods of ``floods.py`` at small bounds: each bound holds, each excess
  is counted and exported, and the sample's verdicts come out as in a clean
  replay.
"""

from __future__ import annotations

import random
import shutil
import struct
import subprocess
from pathlib import Path

import floods
import pytest
from conftest import corpus_files
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from residency_monitor.capture.files import CaptureError, open_capture
from residency_monitor.decode import decode
from residency_monitor.engine import MALFORMED_PROTOCOLS, Engine, EngineConfig, malformed_protocol
from residency_monitor.flows import FlowConfig
from residency_monitor.geo import GeoConfig, Geolocator
from residency_monitor.inspect import NOTE_BOUND, HandshakeBudget, TcpInspector
from residency_monitor.metrics import Metrics
from residency_monitor.policy import default_policy
from residency_monitor.records import FlowRecord
from residency_monitor.residency import Residency
from residency_monitor.sample import SAMPLE_PATH

EDITCAP_SEEDS = (1, 2, 3, 4, 5)
CORRUPT_FRAMES = 40          # frames per capture cut and corrupted at every offset


def feed(frames, config: EngineConfig | None = None, live: bool = True):
    """Frames through an engine (the live path by default); its records."""
    records: list[FlowRecord] = []
    engine = Engine(config, sink=records.append)
    for ts, lt, frame, *_ in frames:
        if live:
            engine.frame(ts, lt, frame)
        else:
            engine.run([(ts, lt, frame, len(frame))])
    engine.finish()
    return engine, records


def check_accounting(engine: Engine, records: list[FlowRecord], fed: int) -> None:
    """Every frame is in exactly one final record, counted as bad, or an orphan fragment;
    and every malformed or truncated frame is counted again under its protocol."""
    assert engine.packets == fed
    in_records = sum(r.packets_out + r.packets_in for r in records if r.final)
    bad = sum(engine.bad.values())
    assert in_records + bad + engine.table.stats["orphan_fragments"] == fed, (
        in_records, dict(engine.bad), engine.table.stats)
    assert sum(engine.bad_protocol.values()) == engine.bad["malformed"] + engine.bad["truncated"]
    assert set(engine.bad_protocol) <= set(MALFORMED_PROTOCOLS)
    assert engine.table.count == 0
    assert engine.inspection is not None and engine.inspection.budget.held == 0


# -- editcap -E on every corpus capture ----------------------------------------------------

@pytest.fixture(scope="module")
def editcap() -> str:
    path = shutil.which("editcap")
    if path is None:
        pytest.skip("editcap not found: `apt-get install -y tshark` (Wireshark's tools) "
                    "provides it")
    return path


def test_editcap_corrupted_corpus_through_the_engine(corpus_dir: Path, editcap: str,
                                                     tmp_path: Path) -> None:
    """``editcap -E 0.02 --seed N``: 2% of the bytes of every frame changed at random."""
    totals = {"frames": 0, "malformed": 0, "errors": 0, "files": 0}
    by_protocol: dict[str, int] = {}
    by_python = set()
    for capture in corpus_files():
        for seed in EDITCAP_SEEDS:
            out = tmp_path / f"{seed}-{capture.name}"
            res = subprocess.run([editcap, "-E", "0.02", "--seed", str(seed), str(capture),
                                  str(out)], capture_output=True, text=True, timeout=60)
            if res.returncode == 0:
                try:
                    with open_capture(out) as reader:
                        frames = list(reader)
                except CaptureError:   # editcap only touches frame bytes: the file opens
                    pytest.fail(f"{out.name} no longer opens")
                out.unlink()
            else:
                # editcap 4.0 cannot write some pcapng blocks back (the QUIC capture's
                # decryption secrets): the same damage, done here
                assert "can't be written" in res.stderr, res.stderr
                by_python.add(capture.name)
                frames = corrupt(_frames(capture), 0.02, seed)
            for live in (True, False):
                engine, records = feed(frames, live=live)
                check_accounting(engine, records, len(frames))
            totals["files"] += 1
            totals["frames"] += len(frames)
            totals["malformed"] += engine.bad["malformed"] + engine.bad["truncated"]
            totals["errors"] += sum(engine.inspect_errors.values())
            for proto, n in engine.bad_protocol.items():
                by_protocol[proto] = by_protocol.get(proto, 0) + n
    assert len(by_python) <= 1, by_python
    # The damage is real: it reached the decoder and the parsers, under several protocols.
    assert totals["files"] == len(EDITCAP_SEEDS) * len(corpus_files()) > 0
    assert totals["frames"] > 15_000
    assert totals["malformed"] > 100 and totals["errors"] > 10
    assert len(by_protocol) >= 3, by_protocol


def corrupt(frames: list, probability: float, seed: int) -> list:
    """What ``editcap -E`` does: each byte replaced by a random one with ``probability``."""
    rng = random.Random(seed)
    out = []
    for ts, lt, frame, wirelen in frames:
        buf = bytearray(frame)
        for i in range(len(buf)):
            if rng.random() < probability:
                buf[i] = rng.randrange(256)
        out.append((ts, lt, bytes(buf), wirelen))
    return out


# -- real frames cut and corrupted at every offset ------------------------------------------

def _frames(path: Path) -> list[tuple[float, int, bytes, int]]:
    with open_capture(path) as reader:
        return list(reader)


@pytest.mark.parametrize("capture", corpus_files(), ids=lambda p: p.name)
def test_real_frames_cut_and_corrupted_at_every_offset(capture: Path) -> None:
    """Before each of a capture's first frames, every prefix of it and every one-byte
    corruption of it enter the same engine, mid-handshake: the damaged copies reach
    the flows and reassembly first (the first copy of a byte wins), so the parsers
    read corrupted handshakes too."""
    frames = _frames(capture)
    stream = []
    for i, (ts, lt, frame, _wl) in enumerate(frames):
        if i < CORRUPT_FRAMES:
            stream += [(ts, lt, frame[:cut]) for cut in range(len(frame))]
            for at in range(len(frame)):
                damaged = bytearray(frame)
                damaged[at] ^= 0xFF if at % 2 else 0x5A
                stream.append((ts, lt, bytes(damaged)))
        stream.append((ts, lt, frame))
    engine, records = feed(stream)
    check_accounting(engine, records, len(stream))


def test_malformed_frames_are_counted_by_protocol() -> None:
    syn = floods.tcp(bytes((10, 0, 0, 1)), bytes((93, 184, 216, 34)), 40000, 443, 7, floods.SYN)
    dns = floods.udp(bytes((10, 0, 0, 1)), bytes((8, 8, 8, 8)), 40000, 53, b"\x00" * 12)
    v6 = floods.ETH[:12] + b"\x86\xdd" + struct.pack("!IHBB16s16s", 6 << 28, 20, 6, 64,
                                                      bytes(16), bytes(16)) + bytes(20)
    cases = {
        "link": [syn[:10]],                      # not even an Ethernet header
        "ipv4": [syn[:20], syn[:14] + b"\x4f" + syn[15:]],   # cut; IHL beyond the packet
        "ipv6": [v6[:30]],
        "tcp": [syn[:40], syn[:46] + b"\x20" + syn[47:]],   # cut; data offset 2
        "udp": [dns[:38]],
    }
    engine = Engine()
    for frames in cases.values():
        for frame in frames:
            engine.frame(1.0, 1, frame)
    assert dict(engine.bad_protocol) == {k: len(v) for k, v in cases.items()}
    assert malformed_protocol("ICMP header beyond the IP payload") == "icmp"
    for frames in cases.values():
        assert all(decode(f, 1)[0] < -1 for f in frames)


# -- the handshake reassembly bound ---------------------------------------------------------

CLIENT = bytes((10, 0, 0, 9))
HELLO_START = b"\x16\x03\x01\x40\x00\x01\x00\xff\xfb\x03\x03"


def _segment(conn: int, off: int, size: int, fill: int = 0x41) -> bytes:
    src = bytes((198, 51, 100, conn))
    data = (HELLO_START + bytes([fill]) * size)[:size] if off == 0 else bytes([fill]) * size
    return floods.tcp(src, floods.VICTIM_TCP, 40000 + conn, 443, 1000 + off, 0x18, data)


def _budget_is_exact(engine: Engine) -> None:
    """The budget's count equals the bytes the live inspectors' buffers hold, within bound."""
    insp = engine.inspection
    assert insp is not None
    held = 0
    for f in engine.table.flows():
        if isinstance(f.insp, TcpInspector):
            held += sum(b.buffered_bytes for b in f.insp.bufs if b is not None)
            assert f.insp.held == sum(b.buffered_bytes for b in f.insp.bufs if b is not None)
    assert insp.budget.held == held <= insp.budget.limit
    assert insp.budget.peak <= insp.budget.limit


SEGMENTS = st.lists(st.tuples(st.integers(0, 11), st.integers(-3000, 6000),
                              st.integers(1, 1400), st.integers(0, 255)),
                    min_size=1, max_size=120)


@settings(max_examples=200, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(segments=SEGMENTS, limit=st.integers(1, 20_000), end_some=st.booleans())
def test_reassembly_bound_holds_for_any_segments(segments, limit: int, end_some: bool) -> None:
    """Overlapping, out-of-order and out-of-window segments of a dozen connections."""
    config = EngineConfig(flows=FlowConfig(reassembly_bytes_total=limit, max_flows=8),
                          reassembly_cap=4096)
    records: list[FlowRecord] = []
    engine = Engine(config, sink=records.append)
    for i, (conn, off, size, fill) in enumerate(segments):
        engine.frame(1.0 + i * 1e-3, 1, _segment(conn, max(0, off) if i == 0 else off, size,
                                                  fill))
        _budget_is_exact(engine)
        if end_some and i % 17 == 16:   # a flow ending (here: a sweep of idle ones) frees bytes
            engine.advance(1e6)
            _budget_is_exact(engine)
    engine.finish()
    budget = engine.inspection.budget   # type: ignore[union-attr]
    assert budget.held == 0
    given_up = [r for r in records if r.notes and NOTE_BOUND in r.notes]
    assert len(given_up) <= budget.dropped
    assert sum(r.packets_out + r.packets_in for r in records) == len(segments)


def test_the_least_recently_grown_handshake_gives_up_first() -> None:
    cap = 4096
    engine = Engine(EngineConfig(flows=FlowConfig(reassembly_bytes_total=3 * cap),
                                 reassembly_cap=cap))
    # Three stalled connections, each holding 2 KB with a gap; then one that keeps growing.
    for conn in (1, 2, 3):
        engine.frame(1.0, 1, _segment(conn, 0, 1000))
        engine.frame(1.0, 1, _segment(conn, 2000, 1000))
    budget = engine.inspection.budget   # type: ignore[union-attr]
    assert budget.held == 6000 and budget.dropped == 0
    for i, off in enumerate(range(0, 3000, 1000)):
        engine.frame(2.0 + i, 1, _segment(4, off, 1000))
    engine.frame(5.0, 1, _segment(2, 1000, 200))          # 2 grows: 1 is now the stalest
    engine.frame(6.0, 1, _segment(5, 0, 1000))
    engine.frame(6.0, 1, _segment(5, 2000, 1000))
    assert budget.held == 11200 and budget.dropped == 0
    engine.frame(7.0, 1, _segment(5, 3000, 1096))         # 12,296 > 12,288: 1 gives up
    assert budget.dropped == 1 and budget.held == 12296 - 2000
    kept = {f.ckey[:4]: f.insp for f in engine.table.flows()}
    stale = kept[bytes((198, 51, 100, 1))]
    assert isinstance(stale, TcpInspector) and stale.note == NOTE_BOUND and stale.held == 0
    for conn in (2, 3, 4, 5):
        insp = kept[bytes((198, 51, 100, conn))]
        assert isinstance(insp, TcpInspector) and insp.held > 0
    _budget_is_exact(engine)


def test_a_flow_given_up_is_still_tracked_and_judged(tmp_path: Path) -> None:
    """The bound costs a handshake's details, never the flow, its counters or its verdict."""
    residency = Residency(default_policy(), Geolocator(GeoConfig()))
    records: list[FlowRecord] = []
    engine = Engine(EngineConfig(flows=FlowConfig(reassembly_bytes_total=3000),
                                 reassembly_cap=4096), sink=records.append, enrich=residency)
    server = bytes((13, 107, 42, 14))    # outbound to the US: a residency violation (Macau)
    for i in range(4):
        engine.frame(1.0 + i, 1, floods.tcp(CLIENT, server, 50000 + i, 443, 5, 0x18,
                                            HELLO_START + bytes(989)))
    engine.finish()
    assert engine.inspection is not None and engine.inspection.budget.dropped == 1
    dropped = [r for r in records if r.notes and NOTE_BOUND in r.notes]
    assert len(dropped) == 1 and dropped[0].packets_out == 1
    assert {r.verdict for r in records} == {"violation"}
    assert all("residency" in r.violations for r in records)


def test_budget_rejects_a_nonpositive_limit() -> None:
    with pytest.raises(ValueError):
        HandshakeBudget(0)


# -- floods at small bounds -----------------------------------------------------------------

SMALL = FlowConfig(max_flows=2000, reassembly_bytes_per_flow=8192,
                   reassembly_bytes_total=256 << 10, dns_max_addresses=1000,
                   max_reassembly_bytes=64 << 10)


def _record_key(r: FlowRecord) -> tuple:
    return (r.transport, r.client_ip, r.client_port, r.server_ip, r.server_port, r.icmp_id)


def _verdicts(records: list[FlowRecord], keys: set | None = None) -> dict:
    return {_record_key(r): (r.verdict, tuple(r.violations), r.app, r.tls_version, r.tls_sni,
                             r.packets_out, r.packets_in, r.bytes_out, r.bytes_in)
            for r in records if r.final and (keys is None or _record_key(r) in keys)}


def _judged(frames) -> tuple[Engine, list[FlowRecord]]:
    residency = Residency(default_policy(), Geolocator(GeoConfig()))
    records: list[FlowRecord] = []
    engine = Engine(EngineConfig(flows=SMALL), sink=records.append, enrich=residency)
    assert engine.inspection is not None
    residency.names = engine.inspection.names
    engine.run(frames)
    return engine, records


@pytest.fixture(scope="module")
def sample() -> list:
    return _frames(SAMPLE_PATH)


@pytest.fixture(scope="module")
def clean(sample) -> dict:
    engine, records = _judged(sample)
    engine.finish()
    return _verdicts(records)


@pytest.mark.parametrize("attack,scale", [("syn", 20_000), ("udp", 10_000),
                                          ("segments", 300), ("dns", 2_000)])
def test_flood_is_contained_and_the_sample_judged_alike(attack: str, scale: int, sample,
                                                        clean) -> None:
    n, frames = floods.attack(attack, scale, cap=SMALL.reassembly_bytes_per_flow // 2)
    t0, t1 = sample[0][0], sample[-1][0]
    engine, records = _judged(floods.mix(floods.timeline(frames, n, t0, t1 - t0), iter(sample)))
    insp = engine.inspection
    assert insp is not None
    assert engine.table.count <= SMALL.max_flows
    assert insp.budget.peak <= SMALL.reassembly_bytes_total
    assert len(insp.names) <= SMALL.dns_max_addresses
    stats = engine.table.stats
    if attack in ("syn", "udp"):
        assert stats["flows_evicted"] >= n - SMALL.max_flows
    if attack == "segments":
        assert insp.budget.dropped > 0 and insp.budget.held > SMALL.reassembly_bytes_total // 2
    if attack == "dns":
        assert insp.names.stats["evicted"] >= n * floods.ADDRS_PER_ANSWER - SMALL.dns_max_addresses
    # every excess is exported, under the names the README lists
    registry = CollectorRegistry()
    Metrics(registry, build_version="test").attach(engine=engine)
    value = registry.get_sample_value
    assert value("residency_flows_evicted_total") == stats["flows_evicted"]
    assert value("residency_handshake_buffers_dropped_total") == insp.budget.dropped
    assert value("residency_dns_addresses_evicted_total") == insp.names.stats["evicted"]
    assert value("residency_datagrams_dropped_total") == stats["datagrams_dropped"]
    assert value("residency_reassembly_bytes", {"kind": "handshake"}) == insp.budget.held
    assert value("residency_dns_addresses") == len(insp.names)
    assert value("residency_malformed_headers_total", {"protocol": "tcp"}) == 0
    engine.finish()
    assert _verdicts(records, set(clean)) == clean
