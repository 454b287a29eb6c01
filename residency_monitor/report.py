"""Evidence reports: what left the network over a period, where to, and under which policy.

A report is built for a regulator or an auditor from what the monitor wrote
down: the audit log (``audit-*.jsonl[.gz]`` segments, whose ``verdict`` and
``flow`` entries carry flow records) or the JSON Lines records of a replay.
Reading (:func:`read_inputs`) is the only I/O; :func:`build_report` is a pure
function of the entries read and the period, and the renderers (JSON and CSV
here, HTML in ``report_html.py``) are pure functions of the :class:`Report`,
so the three formats cannot disagree about a number.

Counting: a flow is counted once. Interim records (``final: false``) of a
long flow are superseded by its final record, or by its latest interim record
when the final one is missing (a crash, a cut log); byte counters are
cumulative, so nothing is summed twice. Only outbound flows that the policy
judged (``compliant``, ``violation``, ``exempt``) enter the data-flow map,
TLS and visibility figures, as in the replay's compliance summary.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import statistics
import zlib
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from .policy import RULES

UNLOCATED = "??"
JUDGED = ("compliant", "violation", "exempt")
#: audit entry types whose ``data`` is a flow record
RECORD_TYPES = ("verdict", "flow")
KNOWN_TYPES = ("segment", "start", "stop", "policy", "verdict", "flow", "exception_expired",
               "alert_failure", "checkpoint", "retention", "live verdict")
#: audit segment names: opening time, then an optional -N (see audit.py)
SEGMENT_RE = re.compile(r"audit-(\d{8}T\d{6}Z)(?:-(\d+))?\.jsonl(\.gz)?\Z")
#: TLS distribution keys for flows without a negotiated TLS version
NO_TLS_PLAINTEXT = "plaintext"
NO_TLS_SEEN = "no TLS seen"
#: Chart/table granularity by period length: the first whose span fits
GRANULARITIES = (("hour", timedelta(days=2)), ("day", timedelta(days=92)),
                 ("month", timedelta(days=3 * 366)), ("year", timedelta.max))


class ReportInputError(Exception):
    """An input file that cannot be read as an audit log or flow records (exit 2)."""


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------


@dataclass
class Tally:
    """Flows and bytes (sent and received, from the client's side), with first and last seen."""

    flows: int = 0
    bytes_out: int = 0
    bytes_in: int = 0
    first_seen: str | None = None
    last_seen: str | None = None

    def add(self, r: dict[str, Any]) -> None:
        self.flows += 1
        self.bytes_out += r["bytes_out"]
        self.bytes_in += r["bytes_in"]
        start = iso(r["ts_start"])
        # ISO strings of one format sort as times do
        self.first_seen = min(self.first_seen or start, start)
        self.last_seen = max(self.last_seen or start, start)


@dataclass
class InputFile:
    path: str
    kind: str                  # audit log, flow records, both, empty
    lines: int = 0
    audit_entries: int = 0
    records: int = 0
    partial_last_line: bool = False
    gzip_truncated: bool = False


@dataclass
class PolicyVersion:
    """One policy (name and file hash) loaded while the period ran, or in force at its start."""

    name: str
    sha256: str
    first_seen: str
    last_seen: str
    loads: int
    in_force_at_start: bool


@dataclass
class PolicyEvent:
    time: str
    name: str
    sha256: str
    path: str
    trigger: str
    result: str
    errors: list[str]


@dataclass
class FlowMapRow:
    zone: str
    country: str
    flows: int
    bytes_out: int
    bytes_in: int
    violation_flows: int
    exempt_flows: int


@dataclass
class TimeBucket:
    start: str
    rule: str
    flows: int
    bytes_out: int
    bytes_in: int


@dataclass
class Destination:
    country: str
    name: str
    asn: int | None
    as_org: str | None
    tally: Tally


@dataclass
class RuleSummary:
    rule: str
    tally: Tally
    destinations: list[Destination]
    more_destinations: int


@dataclass
class TlsRow:
    version: str
    flows: int
    bytes_out: int
    bytes_in: int
    quic_flows: int


@dataclass
class ExpiredException:
    exception: str
    owner: str | None
    expired: str | None
    tally: Tally                # flows it would have matched (records' exception_expired)
    logged: int                 # exception_expired entries in the audit log


@dataclass
class Visibility:
    outbound: Tally
    located: Tally
    tls_seen: Tally
    plaintext: Tally
    encrypted_dns: Tally
    with_notes: Tally
    notes: dict[str, int]


@dataclass
class Latency:
    count: int
    median_s: float | None
    p90_s: float | None
    max_s: float | None


@dataclass
class Report:
    source: str                     # "audit log", "replay records", or both
    period_from: str
    period_to: str
    filtered: bool                  # --from/--to given
    granularity: str
    inputs: list[InputFile]
    counts: dict[str, int]
    notes: list[str]
    policies: list[PolicyVersion]
    policy_events: list[PolicyEvent]
    verdicts: dict[str, Tally]
    flow_map: list[FlowMapRow]
    buckets: list[str]              # every bucket of the period, for the chart
    violations_over_time: list[TimeBucket]
    rules: list[RuleSummary]
    tls: list[TlsRow]
    exceptions_used: dict[str, Tally]
    exceptions_expired: list[ExpiredException]
    visibility: Visibility
    latency: Latency
    monitor_events: list[tuple[str, str]] = field(default_factory=list)
    top: int = 10

    @property
    def judged_flows(self) -> int:
        return sum(self.verdicts[v].flows for v in JUDGED if v in self.verdicts)


# --------------------------------------------------------------------------------------------
# Reading (the only I/O)
# --------------------------------------------------------------------------------------------


@dataclass
class Entry:
    """One input line understood: a flow record, or an audit entry of another type."""

    kind: str                   # "record" or the audit type
    time: float                 # the flow's ts_start, or the entry's time
    data: dict[str, Any]
    audit: bool                 # came from an audit log entry


def expand_paths(paths: Iterable[Path]) -> list[Path]:
    """Files in the order given; a directory stands for its audit segments in name order."""
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            found = segments(p)
            if not found:
                raise ReportInputError(f"{p}: no audit segments (audit-*.jsonl[.gz]) in directory")
            out.extend(found)
        else:
            out.append(p)
    once: dict[Path, Path] = {}
    for p in out:                     # a file named twice is read once, not counted twice
        once.setdefault(p.resolve(), p)
    return list(once.values())


def segments(directory: Path) -> list[Path]:
    """Audit segments in chain order: opening time, then -N (none first).

    A plain segment wins over its ``.gz`` twin (both exist only while compression was cut
    short, and the plain one is complete). Name order alone would put ``-1`` first.
    """
    names = {f.name: SEGMENT_RE.match(f.name) for f in directory.iterdir()}
    keep = {name: m for name, m in names.items()
            if m is not None and not (name.endswith(".gz") and name[:-3] in names)}
    return [directory / name for name, m in sorted(
        keep.items(), key=lambda kv: (kv[1].group(1), int(kv[1].group(2) or 0), kv[0]))]


def read_inputs(paths: Iterable[Path]) -> tuple[list[Entry], list[InputFile]]:
    """Every entry of every file; raises :class:`ReportInputError` naming file:line."""
    entries: list[Entry] = []
    files: list[InputFile] = []
    for path in expand_paths(paths):
        info = InputFile(path=str(path), kind="empty")
        try:
            _read_file(path, info, entries)
        except OSError as exc:
            raise ReportInputError(f"{path}: {exc.strerror or exc}") from None
        info.kind = ("audit log and flow records" if info.audit_entries and info.records
                     else "audit log" if info.audit_entries
                     else "flow records" if info.records else "empty")
        files.append(info)
    return entries, files


def _read_file(path: Path, info: InputFile, entries: list[Entry]) -> None:
    reader = _LineReader(path)
    for n, raw, terminated in reader:
        info.lines = n
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except ValueError:
            if not terminated:          # a writer cut short mid-line: expected, said
                info.partial_last_line = True
                continue
            raise ReportInputError(f"{path}:{n}: not a JSON line") from None
        entry = _entry(obj, f"{path}:{n}")
        if entry.audit:
            info.audit_entries += 1
        else:
            info.records += 1
        entries.append(entry)
    info.gzip_truncated = reader.truncated


def _entry(obj: Any, where: str) -> Entry:
    if isinstance(obj, dict) and "type" in obj and "seq" in obj:
        kind = obj["type"]
        data = obj.get("data")
        if not isinstance(kind, str) or not isinstance(data, (dict, type(None))):
            raise ReportInputError(f"{where}: audit entry without a type or data object")
        if kind == "verdict" and data and data.get("stage") == "live":
            # alerted before the flow ended; the flow's own record follows and is what counts
            return Entry("live verdict", parse_time(obj.get("time"), where), data, True)
        if kind in RECORD_TYPES:
            record = _check_record(data, where)
            return Entry("record", record["ts_start"], record, True)
        return Entry(kind, parse_time(obj.get("time"), where), data or {}, True)
    if isinstance(obj, dict) and "ts_start" in obj:
        return Entry("record", _check_record(obj, where)["ts_start"], obj, False)
    raise ReportInputError(f"{where}: neither an audit entry nor a flow record")


def _check_record(r: Any, where: str) -> dict[str, Any]:
    """The fields the report computes with must be there and numeric; the rest is read leniently."""
    if not isinstance(r, dict):
        raise ReportInputError(f"{where}: flow record is not an object")
    for key in ("ts_start", "bytes_out", "bytes_in"):
        if not isinstance(r.get(key), (int, float)) or isinstance(r.get(key), bool):
            raise ReportInputError(f"{where}: flow record without a numeric {key}")
    return r


class _LineReader:
    """Lines of a plain or gzip file (detected by content), tolerating a truncated gzip stream.

    Yields (line number, bytes, ended by a newline). A writer killed mid-line leaves a last
    line without its newline; a segment compressed while being cut leaves a gzip stream
    without its end: both are reported, not fatal.
    """

    CHUNK = 1 << 20

    def __init__(self, path: Path):
        self.path = path
        self.truncated = False

    def __iter__(self) -> Iterator[tuple[int, bytes, bool]]:
        buf, n = b"", 0
        for chunk in self._chunks():
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                n += 1
                yield n, line, True
        if buf:
            yield n + 1, buf, False

    def _chunks(self) -> Iterator[bytes]:
        with open(self.path, "rb") as f:
            head = f.read(2)
            f.seek(0)
            if head != b"\x1f\x8b":
                yield from iter(lambda: f.read(self.CHUNK), b"")
                return
            d, fed = zlib.decompressobj(wbits=31), False
            for chunk in iter(lambda: f.read(self.CHUNK), b""):
                while chunk:
                    fed = True
                    try:
                        yield d.decompress(chunk)
                    except zlib.error as exc:
                        raise ReportInputError(f"{self.path}: bad gzip data: {exc}") from None
                    chunk = d.unused_data
                    if d.eof:                     # concatenated gzip members
                        d, fed = zlib.decompressobj(wbits=31), False
            self.truncated = fed and not d.eof
            yield d.flush()


# --------------------------------------------------------------------------------------------
# Times
# --------------------------------------------------------------------------------------------


def iso(ts: float) -> str:
    """UTC ISO 8601 to the microsecond, as the audit log writes it; one width, so it sorts."""
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(value: Any, where: str) -> float:
    if not isinstance(value, str):
        raise ReportInputError(f"{where}: entry without a time")
    try:
        return _parse_iso(value)
    except ValueError:
        raise ReportInputError(f"{where}: bad time {value!r}") from None


def _parse_iso(value: str) -> float:
    dt = datetime.fromisoformat(value[:-1] + "+00:00" if value.endswith("Z") else value)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


def parse_bound(value: str, end: bool) -> float:
    """``--from``/``--to``: a date is a whole UTC day (``--to`` includes it), else a time."""
    if len(value) == 10:
        day = datetime.strptime(value, "%Y-%m-%d").replace(tzinfo=timezone.utc)
        return (day + timedelta(days=1) if end else day).timestamp()
    return _parse_iso(value)


def _bucket_start(ts: float, unit: str) -> datetime:
    dt = datetime.fromtimestamp(ts, timezone.utc)
    if unit == "hour":
        return dt.replace(minute=0, second=0, microsecond=0)
    dt = dt.replace(hour=0, minute=0, second=0, microsecond=0)
    if unit == "day":
        return dt
    return dt.replace(day=1) if unit == "month" else dt.replace(month=1, day=1)


def _next_bucket(dt: datetime, unit: str) -> datetime:
    if unit == "hour":
        return dt + timedelta(hours=1)
    if unit == "day":
        return dt + timedelta(days=1)
    if unit == "month":
        return dt.replace(year=dt.year + dt.month // 12, month=dt.month % 12 + 1)
    return dt.replace(year=dt.year + 1)


def bucket_label(start: str, unit: str) -> str:
    return {"hour": start[:13] + "h", "day": start[:10], "month": start[:7]}.get(unit, start[:4])


# --------------------------------------------------------------------------------------------
# Building the report (pure)
# --------------------------------------------------------------------------------------------


def flow_key(r: dict[str, Any]) -> tuple[Any, ...]:
    """What makes interim and final records the same flow."""
    return (r.get("client_ip"), r.get("client_port"), r.get("server_ip"), r.get("server_port"),
            r.get("transport"), r.get("icmp_id"), r.get("vlan"), r["ts_start"])


def one_per_flow(records: Iterable[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """Each flow once: its final record, else its latest interim one. Also: records dropped.

    Several final records with one key are several flows (the same 5-tuple reused at the
    same instant, e.g. one trace captured twice): each is counted, as the monitor did.
    """
    finals: list[dict[str, Any]] = []
    final_keys: set[tuple[Any, ...]] = set()
    interim: dict[tuple[Any, ...], dict[str, Any]] = {}
    seen = 0
    for r in records:
        seen += 1
        k = flow_key(r)
        if r.get("final", True):
            finals.append(r)
            final_keys.add(k)
        elif k not in interim or float(r.get("ts_end") or 0) >= float(
                interim[k].get("ts_end") or 0):
            interim[k] = r
    kept = finals + [r for k, r in interim.items() if k not in final_keys]
    return kept, seen - len(kept)


def destination_name(r: dict[str, Any]) -> str:
    """The most telling name of a server: SNI, HTTP host, a resolved name, a label, the address."""
    names = r.get("server_names") or []
    return str(r.get("tls_sni") or r.get("http_host") or (names[0] if names else None)
               or r.get("dst_label") or r.get("server_ip") or "-")


def tls_key(r: dict[str, Any]) -> str:
    """The TLS distribution's key: the negotiated version; QUIC is TLS 1.3 (RFC 9001)."""
    if r.get("tls_version"):
        return str(r["tls_version"])
    if r.get("app") == "quic" or r.get("quic_version"):
        return "TLS 1.3"
    return NO_TLS_PLAINTEXT if r.get("plaintext") else NO_TLS_SEEN


def tls_seen(r: dict[str, Any]) -> bool:
    """A ClientHello or ServerHello was read (over TCP or in QUIC's Initial packets)."""
    return bool(r.get("tls_version") or r.get("tls_client_versions") or r.get("quic_version"))


def nearest_rank(values: list[float], q: float) -> float:
    """The q-quantile by nearest rank: a value that occurred, as auditors expect."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def build_report(entries: list[Entry], inputs: list[InputFile], start: float | None = None,
                 end: float | None = None, top: int = 10) -> Report:
    """The report over [start, end) (None: unbounded) from entries in input order."""
    def inside(ts: float) -> bool:
        return (start is None or ts >= start) and (end is None or ts < end)

    counts: Counter[str] = Counter()
    raw_records: list[dict[str, Any]] = []
    audit_flows = 0
    policy_entries: list[Entry] = []
    expired_logged: list[dict[str, Any]] = []
    monitor: list[tuple[str, str]] = []
    for e in entries:
        if e.kind == "policy":
            policy_entries.append(e)     # the version in force at the start may predate it
        if e.kind == "record":
            if not inside(e.time):
                continue
            raw_records.append(e.data)
            counts["audit flow records" if e.audit else "replay flow records"] += 1
            audit_flows += e.audit
            continue
        if not inside(e.time):
            continue
        counts[e.kind if e.kind in KNOWN_TYPES else f"unknown type {e.kind}"] += 1
        if e.kind == "exception_expired":
            expired_logged.append({**e.data, "_time": e.time})
        elif e.kind in ("start", "stop"):
            monitor.append((iso(e.time), e.kind))
    flows, superseded = one_per_flow(raw_records)
    if superseded:
        counts["records superseded (interim or repeated)"] = superseded
    counts["flows"] = len(flows)
    partial = sum(f.partial_last_line for f in inputs)
    if partial:
        counts["partial last lines"] = partial

    times = [r["ts_start"] for r in flows]
    lo = start if start is not None else (min(times) if times else 0.0)
    hi = end if end is not None else (max(times) if times else lo)
    unit = next(u for u, span in GRANULARITIES if timedelta(seconds=hi - lo) <= span)

    verdicts: dict[str, Tally] = defaultdict(Tally)
    for r in flows:
        verdicts[str(r.get("verdict"))].add(r)
    judged = [r for r in flows if r.get("verdict") in JUDGED and r.get("direction") == "outbound"]

    audit = any(f.audit_entries for f in inputs)
    replay = any(f.records for f in inputs)
    notes = _caveats(inputs, audit, counts, entries)
    return Report(
        source=" and ".join(s for s, on in (("audit log", audit), ("replay records", replay)) if on)
        or "none",
        period_from=iso(lo), period_to=iso(hi), filtered=start is not None or end is not None,
        granularity=unit, inputs=inputs, counts=dict(sorted(counts.items())), notes=notes,
        policies=_policies(policy_entries, start, end), policy_events=[
            _policy_event(e) for e in policy_entries if inside(e.time)],
        verdicts=dict(sorted(verdicts.items())), flow_map=_flow_map(judged),
        buckets=_buckets(lo, hi, unit), violations_over_time=_over_time(judged, unit),
        rules=_rules(judged, top), tls=_tls(judged), exceptions_used=_exceptions_used(judged),
        exceptions_expired=_expired(judged, expired_logged), visibility=_visibility(judged),
        latency=_latency(judged), monitor_events=monitor, top=top)


def _caveats(inputs: list[InputFile], audit: bool, counts: Counter[str],
             entries: list[Entry]) -> list[str]:
    notes = []
    starts = [e.data for e in entries if e.kind == "start"]
    said = [d["all_flows"] for d in starts if isinstance(d.get("all_flows"), bool)]
    if said and not all(said) or not said and audit and not any(
            e.kind == "record" and e.audit and e.data.get("verdict") == "compliant"
            for e in entries):
        notes.append("The audit log holds no compliant flows (the site logs only violations "
                     "and exemptions unless all flows are logged): flow totals and shares "
                     "cover the flows it holds.")
    if any(d.get("pseudonymized") for d in starts):
        notes.append("Internal client addresses are pseudonymised (anon-...) as logged.")
    for f in inputs:
        if f.partial_last_line:
            notes.append(f"{f.path}: the last line is incomplete (the writer was cut short); "
                         "it was skipped.")
        if f.gzip_truncated:
            notes.append(f"{f.path}: the gzip stream ends early; the lines before the cut "
                         "were read.")
    if audit:
        notes.append("The audit log's hash chain is not verified here: run "
                     "`residency-monitor audit verify` for that.")
    return notes


def _policies(entries: list[Entry], start: float | None, end: float | None) -> list[PolicyVersion]:
    """Policies loaded in the period, and the one in force at its start (the last load before)."""
    before = [e for e in entries if start is not None and e.time < start
              and e.data.get("result") == "loaded"]
    in_force = before[-1] if before else None
    chosen = ([in_force] if in_force else []) + [
        e for e in entries if (start is None or e.time >= start) and (end is None or e.time < end)
        and e.data.get("result") == "loaded"]
    out: dict[tuple[str, str], PolicyVersion] = {}
    for e in chosen:
        key = (str(e.data.get("name") or ""), str(e.data.get("sha256") or ""))
        v = out.get(key)
        if v is None:
            out[key] = PolicyVersion(key[0], key[1], iso(e.time), iso(e.time), 0,
                                     e is in_force)
            v = out[key]
        v.last_seen = iso(e.time)
        v.loads += e is not in_force
    return list(out.values())


def _policy_event(e: Entry) -> PolicyEvent:
    d = e.data
    errors = d.get("errors") or []
    return PolicyEvent(iso(e.time), str(d.get("name") or ""), str(d.get("sha256") or ""),
                       str(d.get("path") or ""), str(d.get("trigger") or ""),
                       str(d.get("result") or ""), [str(x) for x in errors])


def _flow_map(judged: list[dict[str, Any]]) -> list[FlowMapRow]:
    cells: dict[tuple[str, str], FlowMapRow] = {}
    for r in judged:
        key = (str(r.get("zone") or "-"), str(r.get("dst_country") or UNLOCATED))
        row = cells.setdefault(key, FlowMapRow(key[0], key[1], 0, 0, 0, 0, 0))
        row.flows += 1
        row.bytes_out += r["bytes_out"]
        row.bytes_in += r["bytes_in"]
        row.violation_flows += r.get("verdict") == "violation"
        row.exempt_flows += r.get("verdict") == "exempt"
    return sorted(cells.values(), key=lambda c: (-c.bytes_out, -c.flows, c.zone, c.country))


def _buckets(lo: float, hi: float, unit: str) -> list[str]:
    out, b = [], _bucket_start(lo, unit)
    last = _bucket_start(hi - 1e-6 if hi > lo else hi, unit)
    while b <= last:
        out.append(iso(b.timestamp()))
        b = _next_bucket(b, unit)
    return out


def rule_order(rule: str) -> tuple[int, str]:
    return (RULES.index(rule) if rule in RULES else len(RULES), rule)


def _over_time(judged: list[dict[str, Any]], unit: str) -> list[TimeBucket]:
    cells: dict[tuple[str, str], TimeBucket] = {}
    for r in judged:
        if r.get("verdict") != "violation":
            continue
        b = iso(_bucket_start(r["ts_start"], unit).timestamp())
        for rule in r.get("violations") or []:
            cell = cells.setdefault((b, rule), TimeBucket(b, rule, 0, 0, 0))
            cell.flows += 1
            cell.bytes_out += r["bytes_out"]
            cell.bytes_in += r["bytes_in"]
    return sorted(cells.values(), key=lambda c: (c.start, rule_order(c.rule)))


def _rules(judged: list[dict[str, Any]], top: int) -> list[RuleSummary]:
    totals: dict[str, Tally] = defaultdict(Tally)
    dests: dict[str, dict[tuple[str, str, Any], Destination]] = defaultdict(dict)
    for r in judged:
        if r.get("verdict") != "violation":
            continue
        for rule in r.get("violations") or []:
            totals[rule].add(r)
            key = (str(r.get("dst_country") or UNLOCATED), destination_name(r), r.get("dst_asn"))
            d = dests[rule].setdefault(key, Destination(key[0], key[1], key[2],
                                                        r.get("dst_as_org"), Tally()))
            d.tally.add(r)
    out = []
    for rule in sorted(totals, key=rule_order):
        ranked = sorted(dests[rule].values(), key=lambda d: (
            -d.tally.bytes_out - d.tally.bytes_in, -d.tally.flows, d.name, d.country))
        out.append(RuleSummary(rule, totals[rule], ranked[:top], max(0, len(ranked) - top)))
    return out


def _tls(judged: list[dict[str, Any]]) -> list[TlsRow]:
    rows: dict[str, TlsRow] = {}
    for r in judged:
        key = tls_key(r)
        row = rows.setdefault(key, TlsRow(key, 0, 0, 0, 0))
        row.flows += 1
        row.bytes_out += r["bytes_out"]
        row.bytes_in += r["bytes_in"]
        row.quic_flows += r.get("app") == "quic" or bool(r.get("quic_version"))
    return sorted(rows.values(), key=lambda t: (-t.flows, t.version))


def _exceptions_used(judged: list[dict[str, Any]]) -> dict[str, Tally]:
    used: dict[str, Tally] = defaultdict(Tally)
    for r in judged:
        if r.get("exception"):
            used[str(r["exception"])].add(r)
    return dict(sorted(used.items()))


def _expired(judged: list[dict[str, Any]], logged: list[dict[str, Any]]) -> list[ExpiredException]:
    out: dict[str, ExpiredException] = {}
    for d in logged:
        name = str(d.get("exception") or d.get("id") or "-")
        x = out.setdefault(name, ExpiredException(name, None, None, Tally(), 0))
        x.logged += 1
        x.owner = str(d["owner"]) if d.get("owner") else x.owner
        x.expired = str(d["expired"]) if d.get("expired") else x.expired
    for r in judged:
        if r.get("exception_expired"):
            name = str(r["exception_expired"])
            out.setdefault(name, ExpiredException(name, None, None, Tally(), 0)).tally.add(r)
    return sorted(out.values(), key=lambda x: x.exception)


def _visibility(judged: list[dict[str, Any]]) -> Visibility:
    v = Visibility(Tally(), Tally(), Tally(), Tally(), Tally(), Tally(), {})
    notes: Counter[str] = Counter()
    for r in judged:
        v.outbound.add(r)
        if r.get("dst_country"):
            v.located.add(r)
        if tls_seen(r):
            v.tls_seen.add(r)
        if r.get("plaintext"):
            v.plaintext.add(r)
        if r.get("encrypted_dns"):
            v.encrypted_dns.add(r)
        if r.get("notes"):
            v.with_notes.add(r)
            notes.update(str(n).split(":")[0] for n in r["notes"])
    v.notes = dict(sorted(notes.items()))
    return v


def _latency(judged: list[dict[str, Any]]) -> Latency:
    values = [float(r["detection_latency_s"]) for r in judged
              if r.get("verdict") == "violation" and r.get("detection_latency_s") is not None]
    if not values:
        return Latency(0, None, None, None)
    return Latency(len(values), statistics.median(values), nearest_rank(values, 0.9), max(values))


# --------------------------------------------------------------------------------------------
# JSON and CSV
# --------------------------------------------------------------------------------------------


def to_json(report: Report) -> str:
    return json.dumps(asdict(report), indent=2, ensure_ascii=False) + "\n"


CSV_COLUMNS = ("section", "key", "subkey", "item", "flows", "bytes_out", "bytes_in",
               "first_seen", "last_seen", "value")


def csv_rows(report: Report) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []

    def add(section: str, key: Any = "", subkey: Any = "", item: Any = "",
            tally: Tally | None = None, value: Any = "", **counts: Any) -> None:
        row = {"section": section, "key": key, "subkey": subkey, "item": item, "value": value}
        if tally is not None:
            counts = {"flows": tally.flows, "bytes_out": tally.bytes_out,
                      "bytes_in": tally.bytes_in, "first_seen": tally.first_seen or "",
                      "last_seen": tally.last_seen or ""}
        rows.append({c: row.get(c, counts.get(c, "")) for c in CSV_COLUMNS})

    for name in ("source", "period_from", "period_to", "filtered", "granularity", "top"):
        add("report", name, value=getattr(report, name))
    for note in report.notes:
        add("report", "note", value=note)
    for f in report.inputs:
        for name in ("lines", "audit_entries", "records", "partial_last_line",
                     "gzip_truncated"):
            add("input", f.path, f.kind, name, value=getattr(f, name))
    for what, n in report.counts.items():
        add("count", what, value=n)
    for p in report.policies:
        add("policy", p.name, p.sha256, "in_force_at_start" if p.in_force_at_start else "loaded",
            first_seen=p.first_seen, last_seen=p.last_seen, value=p.loads)
    for ev in report.policy_events:
        add("policy_event", ev.time, ev.sha256, ev.result,
            value=f"name={ev.name}; trigger={ev.trigger}; errors={' | '.join(ev.errors)}")
    for verdict, t in report.verdicts.items():
        add("verdict", verdict, tally=t)
    for c in report.flow_map:
        add("flow_map", c.zone, c.country, flows=c.flows, bytes_out=c.bytes_out,
            bytes_in=c.bytes_in, value=f"violation {c.violation_flows}; exempt {c.exempt_flows}")
    for b in report.violations_over_time:
        add("violations_over_time", b.start, b.rule, flows=b.flows, bytes_out=b.bytes_out,
            bytes_in=b.bytes_in)
    for rs in report.rules:
        add("rule", rs.rule, tally=rs.tally, value=f"{rs.more_destinations} more destinations")
        for d in rs.destinations:
            add("top_destination", rs.rule, d.country, d.name, tally=d.tally,
                value=as_text(d.asn, d.as_org))
    for row in report.tls:
        add("tls", row.version, flows=row.flows, bytes_out=row.bytes_out,
            bytes_in=row.bytes_in, value=row.quic_flows)
    for name, t in report.exceptions_used.items():
        add("exception_used", name, tally=t)
    for x in report.exceptions_expired:
        add("exception_expired", x.exception, x.owner or "", x.expired or "", tally=x.tally,
            value=x.logged)
    v = report.visibility
    for name in ("outbound", "located", "tls_seen", "plaintext", "encrypted_dns", "with_notes"):
        add("visibility", name, tally=getattr(v, name))
    for note, n in v.notes.items():
        add("inspection_note", note, value=n)
    lat = report.latency
    for name in ("count", "median_s", "p90_s", "max_s"):
        val = getattr(lat, name)
        add("latency", name, value="" if val is None else val)
    for time, kind in report.monitor_events:
        add("monitor", time, kind)
    return rows


def to_csv(report: Report) -> str:
    """The report as one CSV table.

    CSV layout: one table, one row per figure, columns
    section,key,subkey,item,flows,bytes_out,bytes_in,first_seen,last_seen,value.
    Sections (key, subkey, item): report (field, -, -; value), input (file, kind, field; value),
    count (what; value), policy (name, sha256, in_force_at_start|loaded; first/last seen,
    value = loads), policy_event (time, sha256, result; value = name, trigger, errors),
    verdict (verdict), flow_map (zone, country; value = violation/exempt flows),
    violations_over_time (bucket start, rule), rule (rule), top_destination (rule, country,
    name; value = ASN and organisation), tls (version; value = QUIC flows),
    exception_used (exception), exception_expired (exception, owner, expired; value = log
    entries), visibility (outbound|located|tls_seen|plaintext|encrypted_dns|with_notes),
    inspection_note (note; value = count), latency (count|median_s|p90_s|max_s; value),
    monitor (time, start|stop). Flows and bytes are per flow, counted once; bytes_out is what
    the internal client sent.
    """
    out = io.StringIO()
    w = csv.DictWriter(out, fieldnames=CSV_COLUMNS, lineterminator="\n")
    w.writeheader()
    w.writerows(csv_rows(report))
    return out.getvalue()


def as_text(asn: int | None, org: str | None) -> str:
    return " ".join(x for x in (f"AS{asn}" if asn else "", org or "") if x)
