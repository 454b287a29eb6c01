"""softflowd exports captures to the collector; its flows must be replay's flows.

softflowd (Debian's 1.1.0) reads each corpus capture and the bench capture
(``-r``, with ``-a`` so that flow times are the capture's) and exports IPFIX
and NetFlow v9 to a UDP socket of the test; the collector's records are
matched with ``replay``'s by 5-tuple, with exact packet and byte counts, as
far as softflowd's own semantics allow. Where they cannot agree the capture
is listed with the reason and who is right; a listed capture must still
differ, so a fix on either side makes the test say so.

Then the real daemon, with flow export sources and no capture, receives
softflowd's IPFIX and NetFlow v9 of the bundled sample: its records and
metrics carry replay's residency verdicts.
"""

from __future__ import annotations

import collections
import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import corpus_files
from daemon_fixture import DaemonProcess
from daemon_fixture import scrape_samples as _scrape

from residency_monitor import decode as dec
from residency_monitor.capture.files import open_capture
from residency_monitor.collector import FlowExportCollector
from residency_monitor.engine import EngineConfig
from residency_monitor.flows import FlowConfig
from residency_monitor.netflow import address_text
from residency_monitor.records import FlowRecord
from residency_monitor.replay import replay
from residency_monitor.sample import SAMPLE_PATH

SOFTFLOWD = shutil.which("softflowd")
pytestmark = pytest.mark.skipif(SOFTFLOWD is None, reason="softflowd is not installed "
                                "(make deb-packages installs it)")

# softflowd cannot read these at all
UNREADABLE = {
    "sv-bug-1450-04-tls_DER-incomplete-header.pcap":
        "softflowd stops at the damaged record (\"invalid packet capture length\") and exits 1; "
        "replay reads up to the damage",
    "sv-decode-sll2-01.pcap": "softflowd: unsupported datalink type 276 (Linux cooked v2)",
    "zeek-linux_dlt_sll2.pcap": "softflowd: unsupported datalink type 276 (Linux cooked v2)",
}

# capture -> why softflowd's flows differ from replay's, and who is right
DIFFERENCES = {
    "ja4-tls-alpn-h2.pcap":
        "a BSD loopback (DLT_NULL) capture of IPv6: softflowd exports no flow; replay reads it "
        "(replay is right)",
    "zeek-http-qinq-0.pcap":
        "802.1ad QinQ frames: softflowd does not decode them and exports nothing; replay "
        "reads the stacked tags (replay is right)",
    "zeek-vlan-pcp-dei.pcapng":
        "doubly 802.1Q-tagged frames (3 of 9) are skipped by softflowd: 4/2 packets against "
        "replay's 6/3 (replay is right)",
    "zeek-dns-edns-ecs.pcap":
        "IP fragments: softflowd makes flows with ports 0 of the later fragments; replay "
        "counts them to their datagram's flow (replay is right: one answer, one flow)",
    "zeek-pop3.pcap":
        "a 5-tuple reused after FIN: replay ends the flow at the new SYN (three connections, "
        "end_reason port_reuse); softflowd merges them into one flow within its tcp.fin "
        "timeout (replay is right: three connections)",
    "zeek-truncated-header.pcap":
        "frames cut by a 68-byte snaplen: softflowd's byte counts follow the captured bytes, "
        "replay's the IP total length (replay is right: NetFlow counts IP-layer bytes)",
    "sv-telnet-telnet-01-telnet.pcap":
        "5 frames whose IP total length (up to 137) exceeds the 66 bytes on the wire: "
        "softflowd counts what is there, replay trusts the header (softflowd is nearer the "
        "truth for these malformed headers: 126 bytes too many in replay's bytes_out)",
}


def export(pcap: Path, version: int) -> tuple[list[FlowRecord], FlowExportCollector]:
    """softflowd's export of a capture, collected (no policy: the counts are the point)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        records: list[FlowRecord] = []
        collector = FlowExportCollector(records.append)
        # -a: flow times from the capture; -6: IPv6 too; -d: foreground, exits at the end
        done = subprocess.run([SOFTFLOWD, "-r", str(pcap), "-n", f"127.0.0.1:{port}",
                               "-v", str(version), "-6", "-a", "-d"],
                              capture_output=True, text=True, timeout=120)
        if done.returncode:
            raise RuntimeError(done.stdout[-300:] + done.stderr[-300:])
        sock.setblocking(False)   # softflowd has exited: every datagram is in the buffer
        while True:
            try:
                collector.feed(sock.recv(65535), "127.0.0.1", 0.0)
            except BlockingIOError:
                break
    collector.flush()
    return records, collector


def replayed(pcap: Path) -> list[FlowRecord]:
    """replay with timeouts too long to split a flow: softflowd -r exports each flow whole."""
    records: list[FlowRecord] = []
    never = 10.0 ** 7
    replay([pcap], records.append, EngineConfig(flows=FlowConfig(
        tcp_idle=never, tcp_closed=never, udp_idle=never, other_idle=never, active=never)))
    return [r for r in records if r.final]


def ethernet_padding(pcap: Path) -> collections.Counter:
    """Bytes after each TCP/UDP packet's IP datagram, by (src, sport, dst, dport).

    softflowd counts a packet from its IP header to the end of the frame, so the
    padding of a short Ethernet frame (a 40-byte ACK in a 60-byte frame) adds 6
    bytes; replay counts the IP total length, as NetFlow defines octetDeltaCount.
    """
    out: collections.Counter = collections.Counter()
    with open_capture(pcap) as reader:
        for _ts, linktype, frame, _wirelen in reader:
            d = dec.decode(frame, linktype)
            if d[0] in (6, 17) and d[9] is None:
                key, half = d[1], (len(d[1]) - 4) >> 1
                out[(address_text(key[:half]), key[-4] << 8 | key[-3],
                     address_text(key[half:2 * half]), key[-2] << 8 | key[-1])] += \
                    max(0, len(frame) - d[6] - d[7])
    return out


def mismatches(ours: list[FlowRecord], theirs: list[FlowRecord],
               padding: collections.Counter) -> list[str]:
    """Every way the collected flows differ from replay's (empty: they match)."""
    def key(r: FlowRecord) -> tuple:
        return (r.transport, r.client_ip, r.client_port, r.server_ip, r.server_port)

    expected: dict[tuple, list[FlowRecord]] = collections.defaultdict(list)
    for r in theirs:
        expected[key(r)].append(r)
    problems = []
    for r in ours:
        got = (r.packets_out, r.packets_in, r.bytes_out, r.bytes_in)
        rkey = (r.transport, r.server_ip, r.server_port, r.client_ip, r.client_port)
        if expected.get(key(r)):
            want = expected[key(r)].pop(0)
        elif r.client_from == "first_packet" and expected.get(rkey):
            # both ports alike and softflowd stamps both directions with the flow's start:
            # nothing in the export says who spoke first, so either side may be the client
            want = expected[rkey].pop(0)
            got = (got[1], got[0], got[3], got[2])
        else:
            problems.append(f"not in replay: {key(r)}")
            continue
        pad_out = padding[(want.client_ip, want.client_port, want.server_ip, want.server_port)]
        pad_in = padding[(want.server_ip, want.server_port, want.client_ip, want.client_port)]
        if want.transport not in ("tcp", "udp"):
            pad_out = pad_in = 0
        wanted = (want.packets_out, want.packets_in, want.bytes_out + pad_out,
                  want.bytes_in + pad_in)
        if got != wanted:
            problems.append(f"{key(want)}: collected {got}, replay (+padding) {wanted}")
    problems += [f"not collected: {k}" for k, left in expected.items() for _ in left]
    return problems


CAPTURES = [p for p in corpus_files() if p.name not in UNREADABLE]


@pytest.mark.parametrize("version", [10, 9])
@pytest.mark.parametrize("pcap", CAPTURES, ids=lambda p: p.name)
def test_softflowd_export_matches_replay(corpus_dir, pcap: Path, version: int):
    ours, collector = export(pcap, version)
    problems = mismatches(ours, replayed(pcap), ethernet_padding(pcap))
    stats = collector.decoder.stats
    assert not any(stats[p, "malformed"] for p in ("ipfix", "netflow_v9"))
    assert not any(stats[p, "no_template"] for p in ("ipfix", "netflow_v9"))
    if pcap.name in DIFFERENCES:
        assert problems, f"{pcap.name} now matches: remove it from DIFFERENCES"
    else:
        assert problems == []
        # every record says where it came from, and that it has no TLS metadata
        assert all(r.source == ("ipfix" if version == 10 else "netflow_v9") and
                   r.tls_version is None and r.tls_sni is None and "no TLS metadata" in
                   r.notes[0] for r in ours)


@pytest.mark.parametrize("name", sorted(UNREADABLE))
def test_softflowd_still_cannot_read(corpus_dir, name: str):
    with pytest.raises(RuntimeError):
        export(corpus_dir / name, 10)


@pytest.mark.parametrize("version", [10, 9])
def test_softflowd_export_of_the_bench_capture(bench, version: int):
    """100,000 packets of an office gateway: every flow, exact counts."""
    pcap, _truth = bench
    ours, collector = export(pcap, version)
    theirs = replayed(pcap)
    assert len(ours) == len(theirs) > 1000
    assert mismatches(ours, theirs, ethernet_padding(pcap)) == []
    protocol = "ipfix" if version == 10 else "netflow_v9"
    assert collector.decoder.stats[protocol, "records"] >= 2 * len(ours) - 50


# -- the daemon, with flow export sources and no capture --------------------------------------


def _udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


TRANSPORT_RULES = {"tls_version", "plaintext", "no_handshake"}


def test_daemon_collects_ipfix_and_netflow_v9(tmp_path: Path):
    """The sample (12 violations in 9 flows under the Macau policy), exported twice."""
    ipfix_port, v9_port = _udp_port(), _udp_port()
    daemon = DaemonProcess(tmp_path / "daemon", [
        f"sources: [ipfix://127.0.0.1:{ipfix_port}, netflow://127.0.0.1:{v9_port}]"])
    daemon.start()
    try:
        for port, version in ((ipfix_port, 10), (v9_port, 9)):
            subprocess.run([SOFTFLOWD, "-r", str(SAMPLE_PATH), "-n", f"127.0.0.1:{port}",
                            "-v", str(version), "-6", "-a", "-d"], check=True,
                           capture_output=True, timeout=60)
        deadline = time.monotonic() + 20      # the unanswered SYN waits out the join window
        while time.monotonic() < deadline and len(daemon.final_records()) < 52:
            time.sleep(0.1)
        metrics = _scrape(daemon.port)
    finally:
        assert daemon.stop() == 0
    records = daemon.final_records()
    start = next(e for e in daemon.log_events() if e.get("event") == "start")
    assert start["interfaces"] == [f"ipfix://127.0.0.1:{ipfix_port}",
                                   f"netflow://127.0.0.1:{v9_port}"]   # no packet capture

    # replay judges with the same defaults as the daemon (policy, geolocation sources)
    judged = subprocess.run([sys.executable, "-m", "residency_monitor", "replay", "-q"],
                            check=True, capture_output=True, text=True).stdout
    expected = {}
    for r in map(json.loads, judged.splitlines()):
        violations = [v for v in r["violations"] if v not in TRANSPORT_RULES]
        verdict = r["verdict"] if r["verdict"] != "violation" or violations else "compliant"
        expected[(r["client_ip"], r["client_port"], r["server_ip"], r["server_port"])] = (
            verdict, violations, r["dst_country"])
    for source in ("ipfix", "netflow_v9"):
        got = {(r["client_ip"], r["client_port"], r["server_ip"], r["server_port"]):
               (r["verdict"], r["violations"], r["dst_country"])
               for r in records if r["source"] == source}
        assert got == expected, source
    # residency is judged as replay judges it: 9 flows, one residency violation each; the
    # TLS 1.0 flow and the two plaintext ones (replay's other 3 violations) cannot be judged
    assert sum(len(v[1]) for v in expected.values()) == 9
    compliant = [r for r in records if r["verdict"] == "compliant"]
    assert len(compliant) == 4 and all("transport security not judged" in r["explanation"]
                                       for r in compliant)
    assert all(r["tls_version"] is None and r["tls_ja4"] is None for r in records)

    assert metrics['residency_flows_total{verdict="violation"}'] == 18
    assert sum(v for k, v in metrics.items()
               if k.startswith('residency_violations_total{') and 'rule="residency"' in k) == 18
    assert not any(k.startswith("residency_violations_total{") and 'rule="residency"' not in k
                   for k in metrics)
    assert metrics['residency_flow_export_records_total{protocol="ipfix"}'] == 51
    assert metrics['residency_flow_export_records_total{protocol="netflow_v9"}'] == 51
    assert metrics["residency_flow_export_joined_total"] == 50
    assert metrics["residency_flow_export_unpaired_total"] == 2
    assert metrics['residency_flow_export_malformed_total{protocol="ipfix"}'] == 0
    # located, but never "classified": flow export shows no encryption
    assert metrics["residency_outbound_classified_bytes_total"] == 0
    assert metrics["residency_outbound_located_bytes_total"] > 0
