"""The compliance summary at the end of a replay: what left, where to, and was it allowed.

Written for a compliance officer rather than a network engineer: flows and
bytes by zone and destination country, violations by rule, the destinations
behind each violation, and how much of the outbound traffic the monitor could
locate and judge at all (visibility). Built from final flow records only.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

from .records import FlowRecord

UNLOCATED = "??"


@dataclass
class _Tally:
    flows: int = 0
    bytes_out: int = 0
    bytes_total: int = 0

    def add(self, r: FlowRecord) -> None:
        self.flows += 1
        self.bytes_out += r.bytes_out
        self.bytes_total += r.bytes_out + r.bytes_in


@dataclass
class ComplianceSummary:
    """Accumulates final records; :meth:`lines` renders the report."""

    policy_name: str = ""
    by_zone_country: dict[tuple[str, str], _Tally] = field(
        default_factory=lambda: defaultdict(_Tally))
    verdicts: Counter[str] = field(default_factory=Counter)
    by_rule: dict[str, _Tally] = field(default_factory=lambda: defaultdict(_Tally))
    destinations: dict[str, dict[str, _Tally]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(_Tally)))
    exemptions: dict[str, _Tally] = field(default_factory=lambda: defaultdict(_Tally))
    outbound_bytes: int = 0
    located_bytes: int = 0
    judged_bytes: int = 0

    def add(self, r: FlowRecord) -> None:
        if not r.final or r.verdict is None:
            return
        self.verdicts[r.verdict] += 1
        if r.verdict == "not_evaluated":
            return
        total = r.bytes_out + r.bytes_in
        self.outbound_bytes += total
        if r.dst_country is not None:
            self.located_bytes += total
            if "no_handshake" not in r.violations:
                self.judged_bytes += total
        self.by_zone_country[(r.zone or "-", r.dst_country or UNLOCATED)].add(r)
        dest = r.tls_sni or r.server_ip
        for rule in r.violations:
            self.by_rule[rule].add(r)
            self.destinations[rule][f"{dest} ({r.dst_country or UNLOCATED})"].add(r)
        if r.verdict == "exempt" and r.exception:
            self.exemptions[r.exception].add(r)

    def lines(self, top: int = 5) -> list[str]:
        out = [f"residency summary (policy {self.policy_name})",
               "  verdicts: " + ", ".join(f"{k} {v:,}" for k, v in sorted(self.verdicts.items()))]
        out.append("  outbound flows by zone and destination country "
                   "(flows, bytes sent, bytes total):")
        for (zone, country), t in sorted(self.by_zone_country.items(),
                                         key=lambda kv: -kv[1].bytes_total):
            out.append(f"    {zone:<16} -> {country:<3} {t.flows:>8,} {_size(t.bytes_out):>10} "
                       f"{_size(t.bytes_total):>10}")
        if self.by_rule:
            out.append("  violations by rule (flows, bytes total) and their top destinations:")
        for rule, t in sorted(self.by_rule.items(), key=lambda kv: -kv[1].flows):
            out.append(f"    {rule:<14} {t.flows:>8,} flows {_size(t.bytes_total):>10}")
            dests = sorted(self.destinations[rule].items(), key=lambda kv: -kv[1].bytes_total)
            for dest, d in dests[:top]:
                out.append(f"        {dest:<48} {d.flows:>6,} flows {_size(d.bytes_total):>10}")
            if len(dests) > top:
                out.append(f"        ... and {len(dests) - top:,} more destinations")
        for exc, t in sorted(self.exemptions.items()):
            out.append(f"  exempt by {exc}: {t.flows:,} flows, {_size(t.bytes_total)}")
        out.append(f"  visibility: {_share(self.located_bytes, self.outbound_bytes)} of outbound "
                   f"bytes located, {_share(self.judged_bytes, self.outbound_bytes)} located and "
                   f"classified (encryption established)")
        return out


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    return str(n)


def _share(part: int, whole: int) -> str:
    return f"{100.0 * part / whole:.1f}%" if whole else "n/a"
