"""Presentation for people: a flow table and a replay summary. Machines read JSON Lines."""

from __future__ import annotations

import datetime as dt
from typing import TextIO

from .records import FlowRecord
from .replay import ReplayResult

_COLUMNS = (("start", 19), ("dir", 8), ("proto", 5), ("client", 28), ("server", 28),
            ("app", 7), ("tls", 7), ("sni", 28), ("cc", 3), ("verdict", 26), ("out B", 10),
            ("in B", 10), ("end", 14))


def _ts(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _endpoint(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def _cut(s: str, width: int) -> str:
    return s if len(s) <= width else s[:width - 1] + "…"


def _verdict(r: FlowRecord) -> str:
    if r.verdict in (None, "not_evaluated"):
        return ""
    if r.verdict == "violation":
        return "VIOLATION " + ",".join(r.violations)
    return r.verdict if r.verdict != "exempt" else f"exempt ({r.exception})"


class TableWriter:
    """Collects records and prints them sorted by start time (UTC)."""

    def __init__(self, out: TextIO):
        self.out = out
        self.rows: list[FlowRecord] = []

    def add(self, rec: FlowRecord) -> None:
        if rec.final:
            self.rows.append(rec)

    def close(self) -> None:
        self.out.write("  ".join(name.ljust(w) for name, w in _COLUMNS).rstrip() + "\n")
        for r in sorted(self.rows, key=lambda r: r.ts_start):
            cells = (_ts(r.ts_start), r.direction, r.transport,
                     _endpoint(r.client_ip, r.client_port), _endpoint(r.server_ip, r.server_port),
                     r.app, (r.tls_version or "").replace("TLS ", ""), r.tls_sni or "",
                     r.dst_country or "", _verdict(r), f"{r.bytes_out:,}", f"{r.bytes_in:,}",
                     r.end_reason)
            widths = (w for _, w in _COLUMNS)
            line = "  ".join(_cut(str(c), w).ljust(w) for c, w in zip(cells, widths, strict=True))
            self.out.write(line.rstrip() + "\n")
        self.out.write(f"{len(self.rows)} flows\n")


def summary_lines(res: ReplayResult) -> list[str]:
    """What a replay did, for standard error."""
    lines = [f"replayed {res.files_read} capture(s): {res.packets:,} packets, "
             f"{res.records:,} flow records"]
    stats = res.flow_stats
    if stats.get("flows_evicted"):
        lines.append(f"  {stats['flows_evicted']:,} flows evicted (flow table full)")
    if stats.get("fragments"):
        lines.append(f"  {stats['fragments']:,} IP fragments "
                     f"({stats.get('orphan_fragments', 0):,} without their first fragment)")
    if res.truncated_frames:
        lines.append(f"  {res.truncated_frames:,} frames cut short by the capture's snaplen")
    for kind, n in sorted(res.decode_errors.items()):
        lines.append(f"  {n:,} frames skipped: {kind.replace('_', ' ')}")
    for proto, n in sorted(res.inspect_errors.items()):
        lines.append(f"  {n:,} malformed {proto} handshakes (counted, flows kept)")
    lines.extend(f"warning: {w}" for w in res.warnings)
    return lines
