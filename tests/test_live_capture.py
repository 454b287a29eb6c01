"""Live capture on real interfaces: corpus captures replayed over a veth pair between namespaces.

tcpreplay sends in namespace A, :class:`LiveCapture` receives in namespace B
(in a worker process started with ``ip netns exec``, as the daemon would
run), and the tests compare what arrived with what was sent: every frame,
byte for byte, with kernel timestamps and no kernel drops; the same flow
records as a replay of the original files; filters that really filter.
See ``netns_fixture.py`` for the namespaces and the worker.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import BENCH_GENERATOR, corpus_files
from netns_fixture import (  # noqa: F401  (netns, netns_module are fixtures)
    NetnsPair,
    ReplayResult,
    netns,
    netns_module,
    require_tools,
    write_pcap,
)

from residency_monitor.capture.files import open_capture
from residency_monitor.capture.live import (
    DEFAULT_FILTER,
    LiveCapture,
    LiveCaptureError,
    LiveCaptureWarning,
    LiveConfig,
    default_interface,
)
from residency_monitor.engine import Engine
from residency_monitor.replay import replay

Frame = tuple[float, int, bytes, int]
TIME_FIELDS = {"ts_start", "ts_end", "handshake_at", "detected_at", "detection_latency_s"}
# Two cores: tcpreplay and the veth softirq on one, the capturing Python process on the other.
SEND_CPU, CAPTURE_CPU = 0, 1


def _ethernet_corpus() -> list[tuple[Path, list[Frame]]]:
    """Every corpus capture whose frames are all Ethernet: tcpreplay can put those on a veth."""
    files = []
    for path in corpus_files():
        with open_capture(path) as reader:
            frames = list(reader)
        if frames and all(f[1] == 1 for f in frames):
            files.append((path, frames))
    return files


@pytest.fixture(scope="module")
def corpus_capture(netns_module: NetnsPair, corpus_dir: Path) -> dict[str, Any]:  # noqa: F811
    """The Ethernet corpus, concatenated, replayed once per read path and captured unfiltered."""
    files = _ethernet_corpus()
    assert len(files) > 30, f"expected the shared corpus in {corpus_dir}"
    pcap = netns_module.workdir / "corpus.pcap"
    sent = write_pcap(pcap, [f for _p, frames in files for f in frames])
    runs = {}
    for mode in ("ring", "socket"):
        with netns_module.capture(bpf=None, ring=mode == "ring", cpu=CAPTURE_CPU) as cap:
            rep = netns_module.replay(pcap, topspeed=True, cpu=SEND_CPU)
        runs[mode] = {"result": cap.result, "frames": cap.frames(), "replay": rep}
    return {"files": files, "sent": sent, "pcap": pcap, "runs": runs}


@pytest.mark.parametrize("mode", ["ring", "socket"])
def test_every_replayed_frame_arrives_byte_identical(corpus_capture: dict[str, Any],
                                                     mode: str) -> None:
    run = corpus_capture["runs"][mode]
    sent: list[bytes] = corpus_capture["sent"]
    rep: ReplayResult = run["replay"]
    got: list[Frame] = run["frames"]
    assert (rep.sent, rep.failed) == (len(sent), 0)
    assert len(got) == len(sent) == run["result"]["frames"]
    assert [f[2] for f in got] == sent  # VLAN and QinQ tags too: stripped by the kernel, put back
    assert {f[1] for f in got} == {1}
    assert [f[3] for f in got] == [len(b) for b in sent]
    assert run["result"]["stats"] == {"vb": [len(sent), 0]}  # every frame counted, none dropped


@pytest.mark.parametrize("mode", ["ring", "socket"])
def test_timestamps_are_the_kernels(corpus_capture: dict[str, Any], mode: str) -> None:
    run = corpus_capture["runs"][mode]
    rep: ReplayResult = run["replay"]
    stamps = [f[0] for f in run["frames"]]
    assert all(a <= b for a, b in zip(stamps, stamps[1:], strict=False)), "not monotonic"
    assert rep.started <= stamps[0] and stamps[-1] <= rep.ended
    # Each frame is older than the moment Python's read() handed it over.
    i = 0
    for count, returned_at in run["result"]["batches"]:
        assert all(ts < returned_at for ts in stamps[i:i + count])
        i += count


@pytest.mark.parametrize("mode", ["ring", "socket"])
def test_timestamps_are_taken_on_arrival_not_on_read(netns_module: NetnsPair,  # noqa: F811
                                                     corpus_dir: Path, mode: str) -> None:
    """The worker reads nothing until the replay is over, yet the times show the replay's pace."""
    with open_capture(corpus_dir / "ja4-tls3.pcapng") as reader:
        frames = list(reader)
    pcap = netns_module.workdir / f"held-{mode}.pcap"
    write_pcap(pcap, frames)
    pps = 5000
    with netns_module.capture(bpf=None, ring=mode == "ring", hold=True) as cap:
        rep = netns_module.replay(pcap, pps=pps, cpu=SEND_CPU)
    stamps = [f[0] for f in cap.frames()]
    assert len(stamps) == len(frames) == rep.sent
    assert cap.result["t_go"] > rep.ended
    assert all(rep.started <= ts <= rep.ended for ts in stamps)
    assert stamps[-1] - stamps[0] >= 0.8 * (len(frames) - 1) / pps  # spread at the send rate
    assert all(a <= b for a, b in zip(stamps, stamps[1:], strict=False))


def _records(frames: list[Frame]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    engine = Engine(sink=lambda r: out.append(r.to_dict()))
    engine.run(frames)
    engine.finish()
    return out


def _comparable(records: list[dict[str, Any]]) -> list[str]:
    """Records without their times, in a canonical order (flows end in another order live).

    A replay at full speed squeezes hours of packet time into milliseconds,
    so a flow that went quiet for longer than its idle timeout in the
    original ends with the capture live: ``idle`` reads as ``end_of_capture``.
    """
    rows = []
    for rec in records:
        row = {k: v for k, v in rec.items() if k not in TIME_FIELDS}
        if row["end_reason"] == "idle":
            row["end_reason"] = "end_of_capture"
        rows.append(json.dumps(row, sort_keys=True))
    return sorted(rows)


def _records_of_replay(path: Path) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    replay([path], lambda r: out.append(r.to_dict()))
    return out


def test_engine_gives_the_replays_flow_records(corpus_capture: dict[str, Any]) -> None:
    got: list[Frame] = corpus_capture["runs"]["ring"]["frames"]
    offset, tls = 0, 0
    for path, frames in corpus_capture["files"]:
        live = _records(got[offset:offset + len(frames)])
        offset += len(frames)
        offline = _records_of_replay(path)
        assert _comparable(live) == _comparable(offline), path.name
        tls += sum(1 for r in live if r["tls_sni"] or r["tls_version"])
    assert offset == len(got)
    assert tls > 100  # the comparison covered TLS fields, not just empty records


def _ip_proto(frame: bytes) -> int | None:
    """The IP protocol as libpcap's ``udp`` reads it (IPv6: through a fragment header)."""
    off, ethertype = 14, int.from_bytes(frame[12:14], "big")
    while ethertype in (0x8100, 0x88A8):
        ethertype, off = int.from_bytes(frame[off + 2:off + 4], "big"), off + 4
    if ethertype == 0x0800:
        return frame[off + 9]
    if ethertype == 0x86DD:
        nh = frame[off + 6]
        return frame[off + 40] if nh == 44 else nh
    return None


def test_filter_excludes_udp(netns_module: NetnsPair,  # noqa: F811
                             corpus_capture: dict[str, Any]) -> None:
    sent: list[bytes] = corpus_capture["sent"]
    with netns_module.capture(bpf="not udp", cpu=CAPTURE_CPU) as cap:
        netns_module.replay(corpus_capture["pcap"], topspeed=True, cpu=SEND_CPU)
    kept = [b for b in sent if _ip_proto(b) != 17]
    assert len(sent) - len(kept) > 1000  # the corpus has QUIC and DNS
    assert [f[2] for f in cap.frames()] == kept
    assert cap.result["stats"]["vb"] == [len(kept), 0]


def test_default_filter_keeps_ip_and_tagged_ip(netns_module: NetnsPair,  # noqa: F811
                                               corpus_capture: dict[str, Any]) -> None:
    sent: list[bytes] = corpus_capture["sent"]
    with netns_module.capture(cpu=CAPTURE_CPU) as cap:  # DEFAULT_FILTER
        netns_module.replay(corpus_capture["pcap"], topspeed=True, cpu=SEND_CPU)
    kept = [b for b in sent if _ip_proto(b) is not None]
    assert len(kept) < len(sent)  # ARP and an LLC frame are left out
    assert [f[2] for f in cap.frames()] == kept


def test_bad_filter_is_named(netns: NetnsPair) -> None:  # noqa: F811
    bad = "tcp port https and and"
    cap = LiveCapture(LiveConfig(interfaces=(netns.dev_b,), bpf=bad, netns=netns.b))
    with pytest.raises(LiveCaptureError, match="bad BPF filter 'tcp port https and and'"):
        cap.open()
    assert cap.stats() == {}


def test_unknown_interface(netns: NetnsPair) -> None:  # noqa: F811
    cap = LiveCapture(LiveConfig(interfaces=(netns.dev_b, "nosuch0"), netns=netns.b))
    with pytest.raises(LiveCaptureError, match="no such interface: 'nosuch0'"):
        cap.open()
    with pytest.raises(LiveCaptureError, match="no such network namespace"):
        LiveCapture(LiveConfig(netns="rmtest-no-such-ns")).open()


def _python_in(netns: NetnsPair, drop: str, code: str) -> subprocess.CompletedProcess:  # noqa: F811
    """Python in namespace B without capability ``drop`` (still root, as in a hardened unit)."""
    require_tools("setpriv")
    return netns.exec(netns.b, "setpriv", f"--inh-caps=-{drop}", f"--bounding-set=-{drop}",
                      sys.executable, "-c", code, check=False)


def test_permission_denied_names_cap_net_raw(netns: NetnsPair) -> None:  # noqa: F811
    res = _python_in(netns, "net_raw", (
        "from residency_monitor.capture.live import LiveCapture, LiveConfig, LiveCaptureError\n"
        "try:\n"
        "    LiveCapture(LiveConfig(interfaces=('vb',))).open()\n"
        "except LiveCaptureError as exc:\n"
        "    print(exc)\n"))
    assert res.returncode == 0, res.stderr
    assert "permission denied" in res.stdout and "CAP_NET_RAW" in res.stdout


def test_rcvbuf_falls_back_with_a_warning(netns: NetnsPair) -> None:  # noqa: F811
    res = _python_in(netns, "net_admin", (
        "import warnings\n"
        "from residency_monitor.capture.live import LiveCapture, LiveConfig\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    cap = LiveCapture(LiveConfig(interfaces=('vb',), ring=False))\n"
        "    cap.open()\n"
        "print(cap.read(0.01), [(x.category.__name__, str(x.message)) for x in w])\n"))
    assert res.returncode == 0, res.stderr
    assert "LiveCaptureWarning" in res.stdout and "SO_RCVBUFFORCE not permitted" in res.stdout
    assert LiveCaptureWarning.__name__ in res.stdout


def test_default_interface(netns: NetnsPair) -> None:  # noqa: F811
    with pytest.raises(LiveCaptureError, match="no default route"):
        netns.call(netns.b, default_interface)
    netns.exec(netns.b, "ip", "route", "add", "default", "via", netns.addr_a)
    assert netns.call(netns.b, default_interface) == netns.dev_b

    def opened() -> tuple[str, ...]:
        cap = LiveCapture(LiveConfig())
        cap.open()
        cap.close()
        return cap.interfaces

    assert netns.call(netns.b, opened) == (netns.dev_b,)
    # IPv6 only: namespace A gets an IPv6 default route and no IPv4 one.
    netns.exec(netns.a, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=0")
    netns.exec(netns.a, "ip", "-6", "addr", "add", "fd00:199::1/64", "dev", netns.dev_a, "nodad")
    netns.exec(netns.a, "ip", "-6", "route", "add", "default", "via", "fd00:199::2")
    assert netns.call(netns.a, default_interface) == netns.dev_a


def _udp_to(dest: str, count: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for i in range(count):
            s.sendto(b"residency-monitor test %d" % i, (dest, 9))


def _read_until_quiet(cap: LiveCapture, quiet: float = 0.2) -> list[Frame]:
    frames: list[Frame] = []
    while batch := cap.read(quiet):
        frames.extend(batch)
    return frames


def _loopback_and_veth(peer: str, count: int) -> dict[str, int]:
    """In namespace A: N datagrams over lo and N over the veth, captured on both at once."""
    cap = LiveCapture(LiveConfig(interfaces=("lo", "va"), bpf="udp"))
    cap.open()
    raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
    raw.bind(("lo", 3))  # a plain packet socket, without PACKET_IGNORE_OUTGOING
    raw.settimeout(0.2)
    _udp_to("127.0.0.1", count)
    _udp_to(peer, count)
    frames = _read_until_quiet(cap)
    stats = cap.stats()
    cap.close()
    raw_udp = 0
    try:
        while True:
            frame = raw.recv(65535)
            raw_udp += frame[12:14] == b"\x08\x00" and frame[23] == 17
    except TimeoutError:
        raw.close()
    dst = [socket.inet_ntoa(f[2][30:34]) for f in frames]
    return {"lo": dst.count("127.0.0.1"), "va": dst.count(peer), "raw_lo": raw_udp,
            "stats_lo": stats["lo"][0], "stats_va": stats["va"][0]}


def test_each_packet_is_seen_once_on_loopback_and_veth(netns: NetnsPair) -> None:  # noqa: F811
    n = 25
    with netns.capture(bpf="udp") as far_end:
        seen = netns.call(netns.a, _loopback_and_veth, netns.addr_b, n)
    assert seen == {"lo": n, "va": n, "raw_lo": 2 * n, "stats_lo": n, "stats_va": n}
    assert far_end.result["frames"] == n  # the same datagrams, received on the other end


def _tun_capture(count: int) -> tuple[list[Frame], list[bytes]]:
    """In namespace A: a tun device with a reader; datagrams routed into it are raw IP."""
    import fcntl

    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, 0x400454CA, struct.pack("16sH22x", b"rmtun0", 0x0001 | 0x1000))  # TUN, NO_PI
    subprocess.run(["ip", "addr", "add", "10.199.1.1/24", "dev", "rmtun0"], check=True)
    subprocess.run(["ip", "link", "set", "rmtun0", "up"], check=True)
    cap = LiveCapture(LiveConfig(interfaces=("rmtun0",), bpf="udp"))
    cap.open()
    _udp_to("10.199.1.2", count)
    frames = _read_until_quiet(cap)
    cap.close()
    delivered = []
    time.sleep(0.05)
    while True:
        try:
            delivered.append(os.read(fd, 65535))
        except BlockingIOError:
            break
    os.close(fd)
    return frames, [p for p in delivered if p[9] == 17]


def test_tun_device_gives_raw_ip(netns: NetnsPair) -> None:  # noqa: F811
    frames, delivered = netns.call(netns.a, _tun_capture, 5)
    assert len(frames) == 5
    assert {f[1] for f in frames} == {101}
    assert [f[2] for f in frames] == delivered  # what the tun reader got, byte for byte


def test_netns_option_opens_the_sockets_there(netns: NetnsPair,  # noqa: F811
                                              corpus_dir: Path) -> None:
    with open_capture(corpus_dir / "zeek-http-qinq-0.pcap") as reader:
        frames = list(reader)
    pcap = netns.workdir / "qinq.pcap"
    sent = write_pcap(pcap, frames)
    own = os.readlink("/proc/thread-self/ns/net")
    cap = LiveCapture(LiveConfig(interfaces=(netns.dev_b,), netns=netns.b))
    cap.open()
    assert os.readlink("/proc/thread-self/ns/net") == own
    try:
        netns.replay(pcap, pps=2000)
        got = _read_until_quiet(cap)
    finally:
        cap.close()
    assert [f[2] for f in got] == sent
    assert cap.stats() == {netns.dev_b: (len(sent), 0)}  # totals survive close()
    assert cap.config.bpf == DEFAULT_FILTER


def _promiscuity(dev: str) -> int:
    out = subprocess.run(["ip", "-d", "link", "show", dev], capture_output=True, text=True,
                         check=True).stdout
    return int(out.split("promiscuity ")[1].split()[0])


def _promisc_while_open(dev: str) -> tuple[int, int, int]:
    before = _promiscuity(dev)
    with LiveCapture(LiveConfig(interfaces=(dev,), promisc=True)):
        during = _promiscuity(dev)
    return before, during, _promiscuity(dev)


def test_promiscuous_mode_only_while_open(netns: NetnsPair) -> None:  # noqa: F811
    assert netns.call(netns.b, _promisc_while_open, netns.dev_b) == (0, 1, 0)


def _flap_then_delete(dev: str, peer: str) -> tuple[int, str]:
    """Capture survives the link going down and up; the interface vanishing ends it."""
    cap = LiveCapture(LiveConfig(interfaces=(dev,), bpf="udp"))
    cap.open()
    subprocess.run(["ip", "link", "set", dev, "down"], check=True)
    cap.read(0.05)
    subprocess.run(["ip", "link", "set", dev, "up"], check=True)
    time.sleep(0.1)
    _udp_to(peer, 3)
    seen = len(_read_until_quiet(cap))
    subprocess.run(["ip", "link", "del", dev], check=True)
    try:
        cap.read(0.5)
        cap.read(0.5)
    except LiveCaptureError as exc:
        return seen, str(exc)
    finally:
        cap.close()
    return seen, "no error"


def test_link_flap_is_survived_and_a_vanished_interface_reported(
        netns: NetnsPair) -> None:  # noqa: F811
    seen, error = netns.call(netns.a, _flap_then_delete, netns.dev_a, netns.addr_b)
    assert seen == 3
    assert error == f"interface {netns.dev_a} disappeared"


# ---------------------------------------------------------------------------------------------
# A measurement, printed and not asserted: see benchmarks/bench_live.py for the full sweep.

BENCH_RATES: tuple[int | None, ...] = (None, 400_000, 300_000, 200_000, 100_000)  # None: topspeed


@pytest.fixture(scope="module")
def bench_200k(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not BENCH_GENERATOR.is_file():
        pytest.skip(f"bench generator not found at {BENCH_GENERATOR}")
    raw = tmp_path_factory.mktemp("bench") / "raw.pcap"
    subprocess.run([sys.executable, str(BENCH_GENERATOR), "--packets", "200000", "--seed", "1",
                    "--out", str(raw)], check=True, capture_output=True)
    out = raw.with_name("bench200k.pcap")
    with open_capture(raw) as reader:
        write_pcap(out, reader)
    return out


def test_lossless_rate_with_engine(netns_module: NetnsPair, bench_200k: Path,  # noqa: F811
                                   capsys: pytest.CaptureFixture[str]) -> None:
    lines, best = [], None
    for rate in BENCH_RATES:
        with netns_module.capture(engine=True, pcap=False, cpu=CAPTURE_CPU) as cap:
            rep = netns_module.replay(bench_200k, pps=rate, topspeed=rate is None, cpu=SEND_CPU)
        res = cap.result
        packets, drops = res["stats"]["vb"]
        assert packets == rep.sent == 200_000 and res["engine_packets"] == packets - drops
        asked = "--topspeed" if rate is None else f"--pps {rate}"
        lines.append(f"  {asked}: sent at {rep.pps:,.0f} pps, kernel drops {drops}, "
                     f"{res['engine_records']} records, capture CPU {res['cpu_seconds']:.2f} s "
                     f"({res['cpu_seconds'] / packets * 1e6:.2f} us/packet)")
        if drops == 0:
            best = rep.pps
            break
    with capsys.disabled():
        print("\nlive capture + Engine (ring), bench capture's first 200k packets over veth:")
        print("\n".join(lines))
        print(f"  highest lossless rate: {best:,.0f} pps" if best else "  none lossless")
