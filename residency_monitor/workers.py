"""Several capture processes on one gateway: ``capture.workers: N`` (``run --workers N``).

One Python process decodes and tracks about 400k packets/s (the ring,
benchmarks/bench_live.py); a second core only helps in a second process.
The parent (the daemon) opens N capture sockets per interface, joined in one
``PACKET_FANOUT`` hash group per interface, then forks N workers, each
reading one socket set into its own :class:`~.engine.Engine` (its own flow
table, inspection, residency judge). The kernel's fanout hash is symmetric,
so both directions of a connection reach the same worker, and with the DEFRAG
flag so do its IP fragments (tests/test_fanout.py checks both on this
kernel): no flow is split, none is seen twice.

What stays in the parent, so that it happens once and in one order: the
Prometheus exporter, the Alertmanager client, the audit log and the records
file. Workers send it compact batches over a pipe, one per loop turn: the
records they finish (pickled :class:`~.records.FlowRecord`), the live
verdicts they reach (the verdict, its facts, and the four numbers of the
flow an alert needs), and every half second a snapshot of their engine and
kernel counters. The parent feeds records and verdicts to the same sinks a
single-process daemon uses, in arrival order: each worker's events keep
their order; across workers the order is that of arrival at the parent,
which is the only order two processes' events have. ``/metrics`` sums the
latest snapshots (chosen over prometheus-client's multiprocess mode: no
mmap files to clean up after a crash, and the flow-event tallies are
counted once, in the parent, as before).

Capabilities: the sockets are opened by the parent with CAP_NET_RAW, before
any thread exists; each worker, right after the fork, closes the sockets
that are not its own and drops every capability itself (and switches to
``user:`` as the parent does), so no process keeps a capability past start.
Signals: workers ignore SIGINT, SIGTERM and SIGHUP (a terminal's Ctrl-C or
systemd's SIGTERM reaches the whole group): the parent tells them to reload
or to stop over the pipe, and a worker whose parent is gone sees the pipe
close and stops. On stop each worker flushes its flow table and sends the
records; the parent waits for them at most ``STOP_WAIT`` seconds.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from contextlib import suppress
from dataclasses import dataclass
from multiprocessing.connection import Connection, Pipe, wait
from types import SimpleNamespace
from typing import Any, Protocol

from .capture.live import LiveCapture, LiveCaptureError, LiveConfig, open_fanout
from .engine import Engine, EngineConfig
from .flows import Flow

log = logging.getLogger("residency_monitor")

READ_TIMEOUT = 0.2       # a worker's capture read: also its idle tick
STATS_INTERVAL = 0.5     # seconds between a worker's counter snapshots
# At stop a worker flushes its flow table for at most STOP_FLUSH seconds (answered flows
# first, the rest counted and dropped, as the single-process daemon does) and the parent
# waits at most STOP_WAIT for them: with the alert wait after it, under systemd's 30 s.
STOP_FLUSH = 15.0
STOP_WAIT = 18.0
_EXIT_CRASH = 70


class PoolHost(Protocol):
    """What the daemon gives the pool: its configuration, judge and sinks."""

    config: Any
    residency: Any
    geo: Any
    policy: Any

    def _record(self, rec: Any) -> None: ...

    def live_verdict(self, flow: Any, verdict: Any, facts: Any, ts: float) -> None: ...


@dataclass(frozen=True, slots=True)
class FlowView:
    """The part of a flow that a live verdict's audit entry and alerts read."""

    ckey: bytes
    ts_first: float
    by_c: int
    by_s: int


def engine_snapshot(engine: Engine) -> dict[str, Any]:
    """An engine's counters, as the metrics collector reads them (plain data, picklable)."""
    insp, table = engine.inspection, engine.table
    snap: dict[str, Any] = {
        "packets": engine.packets, "records": engine.records, "active": table.count,
        "bad": dict(engine.bad), "bad_protocol": dict(engine.bad_protocol),
        "table": dict(table.stats), "datagram_bytes": table.reassembly_bytes,
    }
    if insp is not None:
        snap.update(errors=dict(insp.errors), hs_dropped=insp.budget.dropped,
                    hs_held=insp.budget.held, names=dict(insp.names.stats))
    return snap


class EngineTotals:
    """The workers' engines summed: read by ``/metrics`` as if it were one engine.

    Also stands in for the daemon's engine in the parent's loop, where
    ``run``, ``advance`` and ``finish`` have nothing to do: the workers' do.
    """

    def __init__(self) -> None:
        self.parts: dict[int, dict[str, Any]] = {}   # worker -> its latest snapshot

    def _sum(self, key: str) -> int:
        return sum(int(p.get(key, 0)) for p in list(self.parts.values()))

    def _merge(self, key: str) -> dict[str, int]:
        total: Counter[str] = Counter()
        for part in list(self.parts.values()):
            total.update(part.get(key, {}))
        return dict(total)

    @property
    def packets(self) -> int:
        return self._sum("packets")

    @property
    def records(self) -> int:
        return self._sum("records")

    @property
    def bad(self) -> dict[str, int]:
        return self._merge("bad")

    @property
    def bad_protocol(self) -> dict[str, int]:
        return self._merge("bad_protocol")

    @property
    def table(self) -> SimpleNamespace:
        return SimpleNamespace(count=self._sum("active"), stats=self._merge("table"),
                               reassembly_bytes=self._sum("datagram_bytes"))

    @property
    def inspection(self) -> SimpleNamespace | None:
        if not any("errors" in p for p in list(self.parts.values())):
            return None
        return SimpleNamespace(
            errors=self._merge("errors"),
            budget=SimpleNamespace(dropped=self._sum("hs_dropped"), held=self._sum("hs_held")),
            names=SimpleNamespace(stats=self._merge("names")))

    def run(self, frames: Iterable[Any], source: str = "") -> None:
        """Nothing: the parent reads no frames."""

    def advance(self, now: float) -> None:
        """Nothing: each worker expires its own flows."""

    def finish(self, give_up: Callable[[], bool] | None = None) -> int:
        """Nothing: each worker flushes its own table when told to stop."""
        return 0


@dataclass
class _Worker:
    index: int
    pid: int
    conn: Connection
    done: bool = False


class WorkerPool:
    """N fanout capture workers that look like one :class:`LiveCapture` to the daemon.

    ``read()`` returns no frames: it waits for the workers' batches and feeds
    their records and verdicts to the host's sinks, so the daemon's loop
    (audit ticks, reloads, the watchdog) runs unchanged around it.
    """

    def __init__(self, config: LiveConfig, workers: int, host: PoolHost):
        if workers < 2:
            raise ValueError("a pool has at least two workers")
        self.config = config
        self.count = workers
        self.host = host
        self.totals = EngineTotals()
        self._workers: list[_Worker] = []
        self._capture: dict[int, dict[str, tuple[int, int]]] = {}
        self._interfaces: tuple[str, ...] = tuple(config.interfaces)
        self._failed: LiveCaptureError | None = None
        self._closed = False

    @property
    def interfaces(self) -> tuple[str, ...]:
        return self._interfaces

    def open(self) -> None:
        """Open every socket here (CAP_NET_RAW), then fork one worker per socket set."""
        captures = open_fanout(self.config, self.count)
        self._interfaces = captures[0].interfaces
        for index, capture in enumerate(captures):
            ours, theirs = Pipe()
            pid = os.fork()
            if pid == 0:   # the worker: never returns into the daemon
                code = _EXIT_CRASH
                try:
                    ours.close()
                    for w in self._workers:       # earlier workers' pipe ends: theirs to close
                        w.conn.close()
                    for other in captures:
                        if other is not capture:
                            other.release()
                    code = _Child(index, capture, theirs, self.host).run()
                except BaseException:
                    log.exception("capture worker %d failed", index,
                                  extra={"event": "worker_failed", "worker": index})
                finally:
                    os._exit(code)
            theirs.close()
            self._workers.append(_Worker(index, pid, ours))
        for capture in captures:
            capture.release()   # each socket is read, counted and closed by its worker only
        log.info("capture workers started", extra={
            "event": "workers", "workers": self.count, "pids": [w.pid for w in self._workers],
            "fanout": "hash+defrag"})

    def read(self, timeout: float) -> list[Any]:
        """Hand the workers' events to the host for up to ``timeout`` seconds; never frames."""
        if self._failed is not None:
            raise self._failed
        live = {w.conn: w for w in self._workers if not w.done}
        if not live:
            time.sleep(timeout)
            return []
        for conn in wait(list(live), timeout):
            worker = live[conn]   # type: ignore[index]
            for _ in range(64):   # what is queued now, but not forever
                if not self._receive(worker) or not worker.conn.poll(0):
                    break
        if self._failed is not None:
            raise self._failed
        return []

    def _receive(self, worker: _Worker) -> bool:
        try:
            batch = worker.conn.recv()
        except (EOFError, OSError):
            worker.done = True
            if not self._closed and self._failed is None:
                self._failed = LiveCaptureError(f"capture worker {worker.index} "
                                                f"(pid {worker.pid}) exited")
            return False
        for event in batch:
            self._dispatch(worker, event)
        return True

    def _dispatch(self, worker: _Worker, event: tuple[Any, ...]) -> None:
        kind = event[0]
        if kind == "record":
            self.host._record(event[1])
        elif kind == "live":
            _, flow, verdict, facts, ts = event
            self.host.live_verdict(flow, verdict, facts, ts)
        elif kind == "stats":
            self.totals.parts[worker.index] = event[1]
            self._capture[worker.index] = event[2]
        elif kind == "lost":
            if self._failed is None:
                self._failed = LiveCaptureError(event[1])
        elif kind == "done":
            worker.done = True

    def stats(self) -> dict[str, tuple[int, int]]:
        """Per interface, ``(packets, drops)`` summed over the workers' latest snapshots."""
        return capture_totals(dict(self._capture))

    def reload(self) -> None:
        """SIGHUP: each worker re-reads the policy and the geolocation databases."""
        self._send_all("reload")

    def close(self) -> None:
        """Tell every worker to flush and stop; take their last events; wait at most STOP_WAIT."""
        if self._closed:
            return
        self._closed = True
        self._send_all("stop")
        deadline = time.monotonic() + STOP_WAIT
        while True:
            live = {w.conn: w for w in self._workers if not w.done}
            left = deadline - time.monotonic()
            if not live or left <= 0:
                break
            for conn in wait(list(live), left):
                self._receive(live[conn])   # type: ignore[index]
        for w in self._workers:
            if not w.done:
                log.warning("capture worker %d did not stop within %.0f s: killed", w.index,
                            STOP_WAIT, extra={"event": "worker_killed", "worker": w.index})
                _kill(w.pid)
            _reap(w.pid)
            w.conn.close()

    def _send_all(self, message: str) -> None:
        for w in self._workers:
            if not w.done:
                try:
                    w.conn.send(message)
                except OSError:
                    w.done = True


def _kill(pid: int) -> None:
    with suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _reap(pid: int) -> None:
    with suppress(ChildProcessError):
        os.waitpid(pid, 0)


class _Child:
    """One worker process: its capture, its engine, its pipe to the parent."""

    def __init__(self, index: int, capture: LiveCapture, conn: Connection, host: PoolHost):
        self.index = index
        self.capture = capture
        self.conn = conn
        self.host = host
        self.out: list[tuple[Any, ...]] = []
        self.engine = worker_engine(host.config, host.residency, self.out.append, self._live)

    def _live(self, flow: Flow, ts: float, stage: str) -> None:
        hit = self.host.residency.judge_live(flow, ts, stage)
        if hit is not None:
            view = FlowView(flow.ckey, flow.ts_first, flow.by_c, flow.by_s)
            self.out.append(("live", view, hit[0], hit[1], ts))

    def run(self) -> int:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        _drop_privileges(self.host.config.user)
        from .daemon import quiet_gc

        quiet_gc()
        engine, capture, conn, out = self.engine, self.capture, self.conn, self.out
        geo_every = self.host.config.geo.reload_check_interval
        last_stats = last_geo = 0.0
        stopping = False
        while not stopping:
            while conn.poll(0):
                try:
                    message = conn.recv()
                except (EOFError, OSError):   # the parent is gone
                    stopping = True
                    break
                if message == "stop":
                    stopping = True
                elif message == "reload":
                    _reload(self.host)
            try:
                frames = capture.read(READ_TIMEOUT)
            except LiveCaptureError as exc:
                out.append(("lost", str(exc)))
                stopping = True
                frames = []
            if frames:
                engine.run(frames)
            now = time.time()
            engine.advance(now)
            if now - last_geo >= geo_every:
                last_geo = now
                self.host.geo.maybe_reload(now)
            if now - last_stats >= STATS_INTERVAL:
                last_stats = now
                out.append(("stats", engine_snapshot(engine), capture.stats()))
            if out and not self._send():
                return 0
        capture.close()
        deadline = time.monotonic() + STOP_FLUSH
        dropped = engine.finish(give_up=lambda: time.monotonic() >= deadline)
        if dropped:
            log.warning("capture worker %d: %d open flows dropped without a record after "
                        "%.0f s of flushing", self.index, dropped, STOP_FLUSH,
                        extra={"event": "stop_flush_cut", "flows": dropped})
        out.append(("stats", engine_snapshot(engine), capture.stats()))
        out.append(("done",))
        self._send()
        return 0

    def _send(self) -> bool:
        """One batch to the parent; False when it is gone (nothing left to do but exit)."""
        try:
            self.conn.send(self.out[:])
        except OSError:
            return False
        self.out.clear()
        return True


def worker_engine(config: Any, residency: Any, sink: Callable[[tuple[Any, ...]], None],
                  live: Callable[[Flow, float, str], None]) -> Engine:
    """A worker's engine, wired as the single-process daemon's, its records sent as events."""
    engine = Engine(EngineConfig(flows=config.flows, internal_networks=config.internal_networks),
                    sink=lambda rec: sink(("record", rec)), live=live, enrich=residency)
    if engine.inspection is not None:
        residency.names = engine.inspection.names
    return engine


def _drop_privileges(user: str | None) -> None:
    from .privileges import PrivilegeError, drop_privileges

    try:
        done = drop_privileges(user)
    except PrivilegeError as exc:   # the parent, dropping the same way, reports and exits
        raise SystemExit(f"capture worker: {exc}") from None
    if done.warnings:
        log.warning("capture worker could not drop every capability: %s",
                    "; ".join(done.warnings), extra={"event": "privileges"})


def _reload(host: PoolHost) -> None:
    """The policy and databases, re-read as the parent does (the parent logs the outcome)."""
    from .policy import PolicyError, default_policy, load_policy

    path = host.config.policy
    try:
        policy = load_policy(path) if path else default_policy()
    except PolicyError:
        pass   # refused: the running policy stays, as in the parent
    else:
        host.policy = host.residency.policy = policy
    host.geo.reload()


def capture_totals(parts: Mapping[int, Mapping[str, tuple[int, int]]],
                   ) -> dict[str, tuple[int, int]]:
    """Per-interface ``(packets, drops)`` summed over workers."""
    total: dict[str, tuple[int, int]] = {}
    for part in parts.values():
        for name, (packets, drops) in part.items():
            p, d = total.get(name, (0, 0))
            total[name] = (p + packets, d + drops)
    return total
