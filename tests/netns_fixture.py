"""Two network namespaces joined by a veth pair: real interfaces for capture tests.

Live capture can only be tested on real interfaces, and a test must never
put traffic on the machine's own network. So every test gets two fresh
namespaces (``rmtest-<pid>-<n>-a`` and ``-b``), a veth pair between them
(``va`` in A, ``vb`` in B) with addresses from a private test subnet that
exists only inside them, and nothing else: no route leads out, so whatever
is sent stays on the veth. Everything is removed afterwards, also when the
test fails.

Helpers run commands in a namespace (``ip netns exec``), replay a capture
onto the sender end with tcpreplay, run a Python callable inside a namespace
(fork + setns), and run a capture worker (this file run as a script) in the
receiving namespace that writes what it captured to a pcap and a JSON
summary. Usage from a test module::

    from netns_fixture import netns  # noqa: F401  (the fixture)

    def test_x(netns):
        with netns.capture(bpf=None) as cap:
            netns.replay(path, topspeed=True)
        assert cap.result["frames"] == ...

Replayed frames get a foreign unicast destination MAC (see
:func:`write_pcap`), so the receiving kernel treats them as
``PACKET_OTHERHOST`` and never answers them (no RSTs, no ICMP), while a
packet socket still sees every one. IPv6 is disabled in both namespaces
unless asked for, so the kernel's own router solicitations and MLD reports
do not mix with the replayed frames.
"""

from __future__ import annotations

import ctypes
import itertools
import json
import os
import pickle
import re
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

PREFIX = "rmtest"
MAC_A = "02:72:6d:00:00:0a"
MAC_B = "02:72:6d:00:00:0b"
FOREIGN_MAC = bytes.fromhex("02726dfffffe")  # unicast, locally administered, nobody's
CLONE_NEWNET = 0x40000000
VETH_MTU = 65535  # the corpus has frames larger than 1514 bytes (TSO captures)
WORKER = Path(__file__).resolve()
_counter = itertools.count()

Frame = tuple[float, int, bytes, int]


def require_tools(*names: str) -> None:
    """Fail (never skip) with the fix when a needed program is missing."""
    missing = [n for n in names if shutil.which(n) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} not found: live-capture tests need `apt-get "
                    "install -y iproute2 tcpreplay libpcap0.8` (`make test` installs them)",
                    pytrace=False)


def _run(*cmd: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({res.returncode}): {res.stderr.strip()}")
    return res


@dataclass
class ReplayResult:
    """What tcpreplay reported, and the wall-clock window it ran in."""

    sent: int
    failed: int
    seconds: float
    pps: float
    started: float
    ended: float
    output: str


@dataclass
class NetnsPair:
    """Namespaces ``a`` and ``b`` with ``dev_a`` (``addr_a``) <-veth-> ``dev_b`` (``addr_b``)."""

    a: str
    b: str
    dev_a: str = "va"
    dev_b: str = "vb"
    addr_a: str = "10.199.0.1"
    addr_b: str = "10.199.0.2"
    prefix: int = 24
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="rmtest-")))

    def exec(self, ns: str, *cmd: str, check: bool = True,
             timeout: float = 60) -> subprocess.CompletedProcess:
        """Run ``cmd`` inside namespace ``ns``; raise with its stderr if it fails."""
        return _run("ip", "netns", "exec", ns, *cmd, check=check, timeout=timeout)

    def popen(self, ns: str, *cmd: str, **kwargs: Any) -> subprocess.Popen:
        return subprocess.Popen(["ip", "netns", "exec", ns, *cmd], **kwargs)

    def call(self, ns: str, func: Callable[..., Any], *args: Any, timeout: float = 60) -> Any:
        """``func(*args)`` in a child process that has entered namespace ``ns``.

        The result (or the exception) comes back pickled. A forked child
        keeps everything the test built, so any callable works, lambdas too.
        """
        return call_in_netns(ns, func, *args, timeout=timeout)

    def replay(self, pcap: str | os.PathLike, *, pps: int | None = None, topspeed: bool = False,
               limit: int | None = None, loops: int = 1, cpu: int | None = None) -> ReplayResult:
        """tcpreplay ``pcap`` out of ``dev_a`` (preloaded with -K so disk reads do not pace it).

        ``cpu`` pins tcpreplay: veth delivers on the sending CPU's backlog, so
        a sender that migrates between CPUs can reorder frames.
        """
        cmd = ["tcpreplay", "-K", "-i", self.dev_a]
        if topspeed:
            cmd.append("--topspeed")
        elif pps:
            cmd.append(f"--pps={pps}")
        if limit:
            cmd.append(f"--limit={limit}")
        if loops > 1:
            cmd.append(f"--loop={loops}")
        if _usable(cpu):
            cmd = ["taskset", "-c", str(cpu), *cmd]
        started = time.time()
        res = self.exec(self.a, *cmd, os.fspath(pcap), timeout=300)
        ended = time.time()
        return _parse_tcpreplay(res.stdout + res.stderr, started, ended)

    @contextmanager
    def capture(self, *, ns: str | None = None, iface: str | None = None,
                **options: Any) -> Iterator[CaptureWorker]:
        """A capture worker in ``ns`` (default B) on ``iface`` (default ``dev_b``).

        The worker is ready (sockets open) when the block starts; on exit it
        is told to stop, drains what is left, and ``result`` holds its summary.
        """
        worker = CaptureWorker(self, ns or self.b, iface or self.dev_b, options)
        try:
            worker.start()
            yield worker
            worker.finish()
        finally:
            worker.kill()


class CaptureWorker:
    """This file run as a script in a namespace: LiveCapture -> pcap + JSON summary.

    Options (keyword arguments of :meth:`NetnsPair.capture`): ``bpf`` (None for
    everything; default the library's), ``ring`` (bool), ``hold`` (read
    nothing until told to finish: proves timestamps are the kernel's),
    ``engine`` (decode with Engine, summary gets its counts), ``records``
    (also return the flow records), ``pcap`` (write frames, default True),
    ``cpu`` (pin the worker to this CPU).
    """

    def __init__(self, pair: NetnsPair, ns: str, iface: str, options: dict[str, Any]):
        n = next(_counter)
        self.pair, self.ns, self.iface, self.options = pair, ns, iface, options
        self.pcap_path = pair.workdir / f"capture-{n}.pcap"
        self.json_path = pair.workdir / f"capture-{n}.json"
        self.proc: subprocess.Popen | None = None
        self.ready_at = 0.0
        self.result: dict[str, Any] = {}

    def start(self, timeout: float = 30) -> None:
        args = {**self.options, "iface": self.iface, "json": str(self.json_path)}
        if args.pop("pcap", True):
            args["out"] = str(self.pcap_path)
        self.proc = self.pair.popen(self.ns, sys.executable, str(WORKER), json.dumps(args),
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else ""
        if not line.startswith("ready"):
            self.kill()
            err = self.proc.stderr.read() if self.proc.stderr else ""
            raise RuntimeError(f"capture worker did not start: {line!r} {err.strip()}")
        self.ready_at = float(line.split()[1])

    def finish(self, timeout: float = 120) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write("stop\n")
        self.proc.stdin.flush()
        _out, err = self.proc.communicate(timeout=timeout)
        if self.proc.returncode != 0:
            raise RuntimeError(f"capture worker failed ({self.proc.returncode}): {err.strip()}")
        self.result = json.loads(self.json_path.read_text())
        return self.result

    def frames(self) -> list[Frame]:
        """The captured frames, read back with the project's reader."""
        from residency_monitor.capture.files import open_capture

        with open_capture(self.pcap_path) as reader:
            return list(reader)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _usable(cpu: int | None) -> bool:
    """Pinning is an optimisation: a machine without that CPU runs unpinned."""
    return cpu is not None and cpu in os.sched_getaffinity(0)


def _parse_tcpreplay(text: str, started: float, ended: float) -> ReplayResult:
    def num(pattern: str) -> float:
        m = re.search(pattern, text)
        if not m:
            raise RuntimeError(f"unexpected tcpreplay output: {text!r}")
        return float(m.group(1))

    return ReplayResult(sent=int(num(r"Successful packets:\s+(\d+)")),
                        failed=int(num(r"Failed packets:\s+(\d+)")),
                        seconds=num(r"sent in ([\d.]+) seconds"),
                        pps=num(r"([\d.]+) pps"), started=started, ended=ended, output=text)


def call_in_netns(ns: str, func: Callable[..., Any], *args: Any, timeout: float = 60) -> Any:
    """Fork; the child enters ``ns`` (setns) and runs ``func``; its result comes back pickled."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: must never return into pytest, whatever happens
        try:
            os.close(rfd)
            with os.fdopen(wfd, "wb") as w:
                w.write(_child_payload(ns, func, args))
        finally:
            os._exit(0)
    os.close(wfd)
    chunks = []
    deadline = time.monotonic() + timeout
    with os.fdopen(rfd, "rb") as r:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([r], [], [], left)[0]:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                raise TimeoutError(f"callable in namespace {ns} took more than {timeout} s")
            chunk = r.read1(1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
    os.waitpid(pid, 0)
    ok, *rest = pickle.loads(b"".join(chunks))
    if ok:
        return rest[0]
    raise rest[1] from RuntimeError(rest[0])


def _child_payload(ns: str, func: Callable[..., Any], args: tuple[Any, ...]) -> bytes:
    try:
        fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
        _setns(fd)
        os.close(fd)
        return pickle.dumps((True, func(*args)))
    except BaseException as exc:  # everything goes back to the parent
        text = traceback.format_exc()
        try:
            return pickle.dumps((False, text, exc))
        except Exception:
            return pickle.dumps((False, text, RuntimeError(text)))


def _setns(fd: int) -> None:
    """Enter a network namespace (os.setns is 3.12+; libc's setns before)."""
    if hasattr(os, "setns"):
        os.setns(fd, CLONE_NEWNET)
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _cleanup_stale() -> None:
    """Remove namespaces left by test runs that were killed (their pid is gone)."""
    res = _run("ip", "netns", "list", check=False)
    for line in res.stdout.splitlines():
        m = re.match(rf"({PREFIX}-(\d+)-\d+-[ab])\b", line)
        if m and not os.path.exists(f"/proc/{m.group(2)}"):
            _delete_ns(m.group(1))


def _delete_ns(ns: str) -> None:
    """Kill what still runs in ``ns`` (only our own workers can), then delete it."""
    pids = _run("ip", "netns", "pids", ns, check=False).stdout.split()
    for pid in pids:
        with suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)
    _run("ip", "netns", "del", ns, check=False)


def create_pair(ipv6: bool = False) -> NetnsPair:
    """Create the namespaces, the veth pair and addresses; remove everything on failure."""
    require_tools("ip", "tcpreplay", "taskset")
    _cleanup_stale()
    base = f"{PREFIX}-{os.getpid()}-{next(_counter)}"
    pair = NetnsPair(a=f"{base}-a", b=f"{base}-b")
    made: list[str] = []
    try:
        for ns in (pair.a, pair.b):
            _run("ip", "netns", "add", ns)
            made.append(ns)
            flag = "0" if ipv6 else "1"
            for scope in ("all", "default"):
                pair.exec(ns, "sysctl", "-qw", f"net.ipv6.conf.{scope}.disable_ipv6={flag}")
        _run("ip", "link", "add", pair.dev_a, "netns", pair.a, "mtu", str(VETH_MTU),
             "address", MAC_A, "type", "veth", "peer", "name", pair.dev_b, "netns", pair.b,
             "mtu", str(VETH_MTU), "address", MAC_B)
        for ns, dev, addr in ((pair.a, pair.dev_a, pair.addr_a), (pair.b, pair.dev_b, pair.addr_b)):
            _run("ip", "-n", ns, "addr", "add", f"{addr}/{pair.prefix}", "dev", dev)
            _run("ip", "-n", ns, "link", "set", dev, "up")
            _run("ip", "-n", ns, "link", "set", "lo", "up")
    except BaseException:
        for ns in made:
            _delete_ns(ns)
        shutil.rmtree(pair.workdir, ignore_errors=True)
        raise
    return pair


def destroy_pair(pair: NetnsPair) -> None:
    for ns in (pair.a, pair.b):
        _delete_ns(ns)
    shutil.rmtree(pair.workdir, ignore_errors=True)


@contextmanager
def netns_pair(ipv6: bool = False) -> Iterator[NetnsPair]:
    """A :class:`NetnsPair` for the duration of the block; removed also on failure."""
    if os.geteuid() != 0:
        pytest.fail("live-capture tests create network namespaces: run them as root",
                    pytrace=False)
    pair = create_pair(ipv6)
    try:
        yield pair
    finally:
        destroy_pair(pair)


@pytest.fixture
def netns() -> Iterator[NetnsPair]:
    """A fresh namespace pair per test."""
    with netns_pair() as pair:
        yield pair


@pytest.fixture(scope="module")
def netns_module() -> Iterator[NetnsPair]:
    """One namespace pair shared by a module's tests (cheaper; tests must not leave state)."""
    with netns_pair() as pair:
        yield pair


def write_pcap(path: str | os.PathLike, frames: Iterable[Frame],
               dst_mac: bytes | None = FOREIGN_MAC, linktype: int = 1) -> list[bytes]:
    """A nanosecond pcap of ``frames`` (all of ``linktype``); returns the frames as written.

    ``dst_mac`` replaces each Ethernet frame's destination MAC (None keeps
    it), so the receiving kernel never takes a replayed frame for itself.
    """
    written = []
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 262144, linktype))
        for ts, _lt, frame, _wire in frames:
            if dst_mac is not None and len(frame) >= 6:
                frame = dst_mac + frame[6:]
            sec = int(ts)
            nsec = min(999_999_999, round((ts - sec) * 1e9))
            f.write(struct.pack("<IIII", sec, nsec, len(frame), len(frame)))
            f.write(frame)
            written.append(frame)
    return written


# ----------------------------------------------------------------------------------------
# The capture worker: `python netns_fixture.py '{"iface": ..., ...}'` inside a namespace.

def _stdin_says() -> str | None:
    if select.select([sys.stdin], [], [], 0)[0]:
        return sys.stdin.readline().strip() or "eof"
    return None


def _worker(opts: dict[str, Any]) -> None:
    from residency_monitor.capture.live import DEFAULT_FILTER, LiveCapture, LiveConfig

    if _usable(opts.get("cpu")):
        os.sched_setaffinity(0, {opts["cpu"]})
    cfg = LiveConfig(interfaces=(opts["iface"],), bpf=opts.get("bpf", DEFAULT_FILTER),
                     ring=opts.get("ring", True), promisc=opts.get("promisc", False))
    engine, records = _engine(opts)
    cap = LiveCapture(cfg)
    cap.open()
    summary: dict[str, Any] = {"t_open": time.time(), "batches": []}
    print(f"ready {summary['t_open']!r}", flush=True)
    frames: list[Frame] = []
    keep = "out" in opts
    if opts.get("hold"):
        sys.stdin.readline()
    summary["t_go"] = time.time()
    stopping, idle_since = bool(opts.get("hold")), None
    cpu0, drain = time.process_time(), 0.0
    while True:
        t0 = time.perf_counter()
        batch = cap.read(0.02)
        if batch:  # time spent in reads that returned frames: the per-frame cost, not idling
            drain += time.perf_counter() - t0
            summary["batches"].append([len(batch), time.time()])
            if engine is not None:
                engine.run(batch)
            if keep:
                frames.extend(batch)
            idle_since = None
        elif stopping:
            idle_since = idle_since or time.monotonic()
            if time.monotonic() - idle_since > 0.2:  # ring blocks retire within 10 ms
                break
        stopping = stopping or _stdin_says() is not None
    summary["cpu_seconds"] = time.process_time() - cpu0
    summary["read_seconds"] = drain
    summary["stats"] = cap.stats()
    cap.close()
    summary["frames"] = sum(n for n, _t in summary["batches"])
    if engine is not None:
        engine.finish()
        summary["engine_packets"] = engine.packets
        summary["engine_records"] = engine.records
        summary["decode_errors"] = engine.decode_errors
        summary["records"] = records
    if keep:
        write_pcap(opts["out"], frames, dst_mac=None, linktype=frames[0][1] if frames else 1)
    Path(opts["json"]).write_text(json.dumps(summary))


def _engine(opts: dict[str, Any]) -> tuple[Any, list[dict[str, Any]]]:
    records: list[dict[str, Any]] = []
    if not opts.get("engine"):
        return None, records
    from residency_monitor.engine import Engine

    sink = (lambda r: records.append(r.to_dict())) if opts.get("records") else None
    return Engine(sink=sink), records


if __name__ == "__main__":
    _worker(json.loads(sys.argv[1]))
