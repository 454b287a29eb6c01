"""The evidence report as one self-contained HTML page: inline CSS and SVG, nothing fetched.

A pure function of the :class:`~.report.Report`. It is meant to be printed or
attached to a filing, so: no scripts, no external URLs, A4 width with a page
break before each section, every table with headers, every chart with a title,
and every string from the data escaped (host names and zone names are not
trusted). Each table row of figures carries ``data-`` attributes with the
same section and keys as the CSV rows, so a machine can check the page.
"""

from __future__ import annotations

import html
from collections.abc import Iterable
from typing import Any

from .report import (
    FlowMapRow,
    Report,
    Tally,
    as_text,
    bucket_label,
    rule_order,
)

#: Chart colours: one per rule (colour-blind-safe palette), and per link status.
RULE_COLOURS = {"geo_unknown": "#7f7f7f", "residency": "#d55e00", "plaintext": "#cc79a7",
                "tls_version": "#0072b2", "no_handshake": "#e69f00"}
OTHER_COLOUR = "#56b4e9"
STATUS_COLOURS = {"violation": "#d55e00", "exempt": "#e69f00", "compliant": "#009e73"}
CHART_WIDTH = 680     # viewBox units; the SVG scales to the page (A4 content is ~680 px)
MAX_NODES = 12        # countries (and zones) drawn one by one; the rest are "other"

CSS = """
@page { size: A4; margin: 14mm 12mm; }
* { box-sizing: border-box; }
body { font: 10.5pt/1.4 "DejaVu Sans", "Liberation Sans", Arial, sans-serif; color: #111;
       max-width: 186mm; margin: 0 auto; padding: 8px; background: #fff; }
h1 { font-size: 18pt; margin: 0 0 4px; }
h2 { font-size: 13.5pt; border-bottom: 2px solid #333; padding-bottom: 2px; margin: 18px 0 8px; }
h3 { font-size: 11pt; margin: 12px 0 4px; overflow-wrap: anywhere; }
p, li, dd, td, th { overflow-wrap: anywhere; }
dl.meta { display: grid; grid-template-columns: max-content minmax(0, 1fr); gap: 2px 12px;
          margin: 8px 0; }
dl.meta dt { font-weight: bold; }
dl.meta dd { margin: 0; }
table { border-collapse: collapse; width: 100%; margin: 6px 0 10px; font-size: 9pt; }
th, td { border: 1px solid #bbb; padding: 2px 5px; text-align: left; vertical-align: top; }
th { background: #eee; overflow-wrap: normal; }
td.flows, td.bytes-out, td.bytes-in, td.num { text-align: right; white-space: nowrap;
                                              font-variant-numeric: tabular-nums; }
caption { text-align: left; font-style: italic; padding: 2px 0; caption-side: top; }
svg { display: block; width: 100%; height: auto; max-width: 100%; margin: 6px 0; }
svg text { font-family: "DejaVu Sans", Arial, sans-serif; }
.notes { background: #fff8e1; border-left: 4px solid #e69f00; padding: 4px 10px; }
.muted { color: #555; }
.legend span { display: inline-block; margin-right: 12px; white-space: nowrap; }
.legend i { display: inline-block; width: 10px; height: 10px; margin-right: 4px; }
section { margin-top: 10px; }
@media print {
  body { max-width: none; padding: 0; }
  section { break-before: page; }
  section.first { break-before: auto; }
  h2, h3 { break-after: avoid; }
  tr, svg, dl { break-inside: avoid; }
  thead { display: table-header-group; }
}
"""


def e(value: Any) -> str:
    """Escape anything from the data for text and attribute values."""
    return html.escape("" if value is None else str(value), quote=True)


def n(value: int) -> str:
    return f"{value:,}"


def size(value: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:,.0f} {unit}" if unit == "B" else f"{value:,.1f} {unit}"
        value /= 1000
    return str(value)


def share(part: int, whole: int) -> str:
    return f"{100.0 * part / whole:.1f}%" if whole else "n/a"


def when(iso_time: str | None) -> str:
    """A report's ISO time, shortened for people: the date and time to the second, UTC."""
    return "" if not iso_time else iso_time[:19].replace("T", " ")


def clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "\u2026"


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------


def _table(caption: str, headers: Iterable[str], rows: Iterable[str], table_id: str = "") -> str:
    head = "".join(f'<th scope="col">{e(h)}</th>' for h in headers)
    body = "".join(rows) or f'<tr><td colspan="{len(list(headers))}">none</td></tr>'
    ident = f' id="{e(table_id)}"' if table_id else ""
    return (f"<table{ident}><caption>{e(caption)}</caption><thead><tr>{head}</tr></thead>"
            f"<tbody>{body}</tbody></table>")


def _row(section: str, key: Any, cells: Iterable[str], subkey: Any = "", item: Any = "",
         flows: int | None = None, bytes_out: int | None = None,
         bytes_in: int | None = None) -> str:
    attrs = [f'data-section="{e(section)}"', f'data-key="{e(key)}"']
    if subkey != "":
        attrs.append(f'data-subkey="{e(subkey)}"')
    if item != "":
        attrs.append(f'data-item="{e(item)}"')
    for name, value in (("flows", flows), ("bytes-out", bytes_out), ("bytes-in", bytes_in)):
        if value is not None:
            attrs.append(f'data-{name}="{value}"')
    return f"<tr {' '.join(attrs)}>{''.join(cells)}</tr>"


def _td(value: Any, cls: str = "") -> str:
    return f'<td class="{cls}">{e(value)}</td>' if cls else f"<td>{e(value)}</td>"


def _figures(flows: int, bytes_out: int, bytes_in: int) -> list[str]:
    return [_td(n(flows), "flows"), _td(n(bytes_out), "bytes-out"), _td(n(bytes_in), "bytes-in")]


def _tally_row(section: str, key: Any, label_cells: list[str], t: Tally, subkey: Any = "",
               item: Any = "", times: bool = True, extra: Iterable[str] = ()) -> str:
    cells = label_cells + _figures(t.flows, t.bytes_out, t.bytes_in)
    if times:
        cells += [_td(when(t.first_seen)), _td(when(t.last_seen))]
    return _row(section, key, cells + list(extra), subkey, item, t.flows, t.bytes_out, t.bytes_in)


FIG_HEADERS = ("flows", "bytes sent", "bytes received")
SEEN_HEADERS = ("first seen (UTC)", "last seen (UTC)")


# --------------------------------------------------------------------------------------------
# Charts (hand-made SVG)
# --------------------------------------------------------------------------------------------


def _svg(chart_id: str, title: str, desc: str, width: float, height: float, body: str) -> str:
    return (f'<svg id="{chart_id}" class="chart" role="img" '
            f'viewBox="0 0 {width} {height:.0f}" aria-labelledby="{chart_id}-t {chart_id}-d">'
            f'<title id="{chart_id}-t">{e(title)}</title><desc id="{chart_id}-d">{e(desc)}</desc>'
            f"{body}</svg>")


def _group(rows: list[FlowMapRow]) -> tuple[list[str], list[str], dict[tuple[str, str], list[int]]]:
    """Zones and countries to draw (the biggest; the rest as "other"), and their links."""
    def top(names: dict[str, int]) -> list[str]:
        ranked = sorted(names, key=lambda k: (-names[k], k))
        return ranked if len(ranked) <= MAX_NODES else ranked[:MAX_NODES - 1] + ["other"]

    zone_tot: dict[str, int] = {}
    country_tot: dict[str, int] = {}
    for r in rows:
        zone_tot[r.zone] = zone_tot.get(r.zone, 0) + r.bytes_out
        country_tot[r.country] = country_tot.get(r.country, 0) + r.bytes_out
    zones, countries = top(zone_tot), top(country_tot)
    links: dict[tuple[str, str], list[int]] = {}
    for r in rows:
        z = r.zone if r.zone in zones else "other"
        c = r.country if r.country in countries else "other"
        link = links.setdefault((z, c), [0, 0, 0, 0])   # bytes sent, flows, violations, exempt
        link[0] += r.bytes_out
        link[1] += r.flows
        link[2] += r.violation_flows
        link[3] += r.exempt_flows
    return zones, countries, links


def flow_map_svg(report: Report) -> str:
    """Zones on the left, destination countries on the right, bands as wide as the bytes sent."""
    rows = report.flow_map
    title = "Data-flow map: bytes sent from each zone to each destination country"
    if not rows:
        return _svg("flow-map-chart", title, "No outbound flows in the period.", CHART_WIDTH, 40,
                    '<text x="10" y="25">No outbound flows in the period.</text>')
    zones, countries, links = _group(rows)
    by_bytes = sum(v[0] for v in links.values()) > 0
    weight = {k: (v[0] if by_bytes else v[1]) for k, v in links.items()}
    total = sum(weight.values()) or 1
    gap, min_h = 6, 8.0          # at least 14 units per node, so labels never overlap
    slots = max(len(zones), len(countries))
    plot_h = max(180.0, 26.0 * slots)
    scale = (plot_h - gap * (slots - 1)) / total
    x0, x1, node_w = 150.0, CHART_WIDTH - 170.0, 12.0

    def stack(names: list[str], side: int) -> dict[str, tuple[float, float]]:
        pos, y = {}, 24.0
        for name in names:
            h = max(min_h, sum(w for k, w in weight.items() if k[side] == name) * scale)
            pos[name] = (y, h)
            y += h + gap
        return pos

    zpos, cpos = stack(zones, 0), stack(countries, 1)
    height = max(max(y + h for y, h in zpos.values()), max(y + h for y, h in cpos.values())) + 10
    parts = [f'<text x="{x0 - 6:.0f}" y="14" text-anchor="end" font-size="11" '
             f'font-weight="bold">zone</text>',
             f'<text x="{x1 + node_w + 6:.0f}" y="14" font-size="11" '
             f'font-weight="bold">destination country</text>']
    zoff = {z: zpos[z][0] for z in zones}
    coff = {c: cpos[c][0] for c in countries}
    order = sorted(links, key=lambda k: (zones.index(k[0]), countries.index(k[1])))
    for z, c in order:
        bytes_out, flows, viol, exempt = links[(z, c)]
        h = weight[(z, c)] * scale
        ya, yb = zoff[z], coff[c]
        zoff[z] += h
        coff[c] += h
        status = "violation" if viol else "exempt" if exempt else "compliant"
        xm = (x0 + node_w + x1) / 2
        xa = x0 + node_w
        d = (f"M{xa:.1f},{ya:.1f} C{xm:.1f},{ya:.1f} {xm:.1f},{yb:.1f} {x1:.1f},{yb:.1f} "
             f"L{x1:.1f},{yb + h:.1f} C{xm:.1f},{yb + h:.1f} {xm:.1f},{ya + h:.1f} "
             f"{xa:.1f},{ya + h:.1f} Z")
        parts.append(
            f'<path class="link {status}" d="{d}" fill="{STATUS_COLOURS[status]}" '
            f'fill-opacity="0.5" stroke="{STATUS_COLOURS[status]}" stroke-width="0.6" '
            f'data-zone="{e(z)}" data-country="{e(c)}" data-bytes-out="{bytes_out}">'
            f"<title>{e(z)} \u2192 {e(c)}: {n(flows)} flows, {e(size(bytes_out))} sent "
            f"({n(viol)} violations, {n(exempt)} exempt)</title></path>")
    for z in zones:
        y, h = zpos[z]
        tot = sum(links[k][0] for k in links if k[0] == z)
        parts.append(f'<rect class="node zone" x="{x0:.0f}" y="{y:.1f}" width="{node_w:.0f}" '
                     f'height="{h:.1f}" fill="#444"><title>{e(z)}: {e(size(tot))} sent</title>'
                     f'</rect><text x="{x0 - 6:.0f}" y="{y + h / 2 + 4:.1f}" text-anchor="end" '
                     f'font-size="11">{e(clip(z, 20))}</text>')
    for c in countries:
        y, h = cpos[c]
        tot = sum(links[k][0] for k in links if k[1] == c)
        parts.append(f'<rect class="node country" x="{x1:.0f}" y="{y:.1f}" '
                     f'width="{node_w:.0f}" height="{h:.1f}" fill="#444"><title>{e(c)}: '
                     f'{e(size(tot))} sent</title></rect>'
                     f'<text x="{x1 + node_w + 6:.0f}" y="{y + h / 2 + 4:.1f}" font-size="11">'
                     f"{e(clip(c, 8))} {e(size(tot))}</text>")
    measure = "bytes sent" if by_bytes else "flows (no bytes were sent)"
    desc = (f"{len(zones)} zone(s) and {len(countries)} destination(s); band widths are "
            f"{measure}; red bands carry violations, amber exempt flows, green compliant ones.")
    return _svg("flow-map-chart", title, desc, CHART_WIDTH, height, "".join(parts))


def _nice_max(value: int) -> int:
    step = 1
    while step * 10 < value:
        step *= 10
    for m in (1, 2, 5, 10):
        if m * step >= value:
            return m * step
    return value


def over_time_svg(report: Report) -> str:
    """Violations (flows, by rule, stacked) per bucket of the period."""
    unit = report.granularity
    title = f"Violating flows per {unit}, by rule"
    cells: dict[str, dict[str, int]] = {}
    for cell in report.violations_over_time:
        cells.setdefault(cell.start, {})[cell.rule] = cell.flows
    rules = sorted({b.rule for b in report.violations_over_time}, key=rule_order)
    buckets = report.buckets or sorted(cells)
    left, right, top, bottom = 44.0, 10.0, 10.0, 42.0
    height = 230.0
    plot_w, plot_h = CHART_WIDTH - left - right, height - top - bottom
    peak = max((sum(c.values()) for c in cells.values()), default=0)
    ymax = _nice_max(max(peak, 1))
    parts = []
    for frac in (0, 0.5, 1):
        y = top + plot_h * (1 - frac)
        value = ymax * frac
        label = n(int(value)) if value == int(value) else f"{value:.1f}"
        parts.append(f'<line x1="{left:.0f}" y1="{y:.1f}" x2="{CHART_WIDTH - right:.0f}" '
                     f'y2="{y:.1f}" stroke="#ccc" stroke-width="0.8"/>'
                     f'<text x="{left - 4:.0f}" y="{y + 4:.1f}" text-anchor="end" '
                     f'font-size="10">{label}</text>')
    slot = plot_w / max(len(buckets), 1)
    bar_w = max(1.0, slot * 0.8)
    every = max(1, -(-len(buckets) // 10))       # at most about ten axis labels
    for i, b in enumerate(buckets):
        x = left + i * slot + (slot - bar_w) / 2
        y = top + plot_h
        for rule in rules:
            flows = cells.get(b, {}).get(rule, 0)
            if not flows:
                continue
            h = plot_h * flows / ymax
            y -= h
            parts.append(f'<rect class="bar" x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" '
                         f'height="{h:.1f}" fill="{RULE_COLOURS.get(rule, OTHER_COLOUR)}" '
                         f'data-bucket="{e(b)}" data-rule="{e(rule)}" data-flows="{flows}">'
                         f"<title>{e(bucket_label(b, unit))}: {n(flows)} {e(rule)}</title></rect>")
        if i % every == 0:
            parts.append(f'<text x="{x + bar_w / 2:.1f}" y="{top + plot_h + 14:.1f}" '
                         f'font-size="9.5" text-anchor="middle">{e(bucket_label(b, unit))}</text>')
    parts.append(f'<line x1="{left:.0f}" y1="{top + plot_h:.1f}" x2="{CHART_WIDTH - right:.0f}" '
                 f'y2="{top + plot_h:.1f}" stroke="#333"/>')
    x = left
    for rule in rules:
        parts.append(f'<rect x="{x:.0f}" y="{height - 14:.0f}" width="10" height="10" '
                     f'fill="{RULE_COLOURS.get(rule, OTHER_COLOUR)}"/><text x="{x + 14:.0f}" '
                     f'y="{height - 5:.0f}" font-size="10">{e(clip(rule, 20))}</text>')
        x += 24 + 6.5 * len(clip(rule, 20))
    if not rules:
        parts.append(f'<text x="{left + 10:.0f}" y="{top + plot_h / 2:.0f}" font-size="12">'
                     "No violations in the period.</text>")
    desc = (f"{len(buckets)} {unit}(s) from {when(report.period_from)} to "
            f"{when(report.period_to)} UTC; the highest bar is {n(peak)} flows.")
    return _svg("violations-chart", title, desc, CHART_WIDTH, height, "".join(parts))


def tls_svg(report: Report) -> str:
    """Flows per negotiated TLS version, as horizontal bars."""
    rows = report.tls
    title = "Outbound flows by negotiated TLS version"
    bar_h, gap, left = 16.0, 6.0, 120.0
    height = max(30.0, len(rows) * (bar_h + gap) + 8)
    peak = max((r.flows for r in rows), default=0) or 1
    parts = []
    for i, r in enumerate(rows):
        y = 4 + i * (bar_h + gap)
        w = (CHART_WIDTH - left - 150) * r.flows / peak
        colour = "#d55e00" if r.version in ("plaintext",) else "#0072b2"
        parts.append(f'<text x="{left - 6:.0f}" y="{y + 12:.1f}" text-anchor="end" '
                     f'font-size="11">{e(clip(r.version, 18))}</text>'
                     f'<rect class="bar" x="{left:.0f}" y="{y:.1f}" width="{max(w, 1):.1f}" '
                     f'height="{bar_h:.0f}" fill="{colour}" data-version="{e(r.version)}" '
                     f'data-flows="{r.flows}"><title>{e(r.version)}: {n(r.flows)} flows, '
                     f"{e(size(r.bytes_out + r.bytes_in))}</title></rect>"
                     f'<text x="{left + max(w, 1) + 6:.1f}" y="{y + 12:.1f}" font-size="10">'
                     f"{n(r.flows)} flows, {e(size(r.bytes_out + r.bytes_in))}</text>")
    if not rows:
        parts.append('<text x="10" y="20" font-size="12">No outbound flows.</text>')
    return _svg("tls-chart", title, f"{len(rows)} version(s)", CHART_WIDTH, height,
                "".join(parts))


# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------


def _header(r: Report) -> str:
    inputs = ", ".join(f"{i.path} ({i.kind})" for i in r.inputs)
    meta = [("Period (UTC)", f"{when(r.period_from)} to {when(r.period_to)}"
             + (" (as requested; the end is exclusive)" if r.filtered
                else " (first to last flow start)")),
            ("Evidence from", r.source), ("Input files", inputs),
            ("Flows counted", n(r.counts.get("flows", 0))),
            ("Judged outbound flows", n(r.judged_flows)),
            ("Policy versions in force", ", ".join(f"{p.name} ({p.sha256[:12]}\u2026)"
                                                   for p in r.policies) or "not recorded")]
    dl = "".join(f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in meta)
    notes = "".join(f"<li>{e(x)}</li>" for x in r.notes)
    return ("<header><h1>Data residency evidence report</h1>"
            f'<dl class="meta">{dl}</dl>'
            + (f'<ul class="notes">{notes}</ul>' if notes else "") + "</header>")


def _summary(r: Report) -> str:
    rows = [_tally_row("verdict", v, [_td(v)], t) for v, t in r.verdicts.items()]
    return ('<section id="summary" class="first"><h2>Verdicts</h2>'
            + _table("Every flow counted once, by verdict", ("verdict",) + FIG_HEADERS
                     + SEEN_HEADERS, rows, "verdicts-table") + "</section>")


def _flow_map(r: Report) -> str:
    rows = [_row("flow_map", c.zone, [_td(c.zone), _td(c.country)]
                 + _figures(c.flows, c.bytes_out, c.bytes_in)
                 + [_td(n(c.violation_flows), "num"), _td(n(c.exempt_flows), "num")],
                 c.country, "", c.flows, c.bytes_out, c.bytes_in) for c in r.flow_map]
    legend = "".join(f'<span><i style="background:{colour}"></i>{e(k)}</span>'
                     for k, colour in STATUS_COLOURS.items())
    return ('<section id="flow-map"><h2>Data-flow map</h2>'
            '<p class="muted">Judged outbound flows from each zone to each destination country '
            f'("{e("??")}" = not located). Band widths are bytes sent.</p>'
            + flow_map_svg(r) + f'<p class="legend">{legend}</p>'
            + _table("Flows by zone and destination country", ("zone", "country") + FIG_HEADERS
                     + ("violations", "exempt"), rows, "flow-map-table") + "</section>")


def _over_time(r: Report) -> str:
    rows = [_row("violations_over_time", b.start, [_td(bucket_label(b.start, r.granularity)),
                                                   _td(b.rule)]
                 + _figures(b.flows, b.bytes_out, b.bytes_in), b.rule, "", b.flows,
                 b.bytes_out, b.bytes_in) for b in r.violations_over_time]
    return ('<section id="violations-over-time"><h2>Violations over time</h2>'
            + over_time_svg(r)
            + _table(f"Violating flows per {r.granularity} and rule (a flow breaking two rules "
                     "counts under each)", (r.granularity, "rule") + FIG_HEADERS, rows,
                     "violations-table") + "</section>")


def _rules(r: Report) -> str:
    parts = ['<section id="rules"><h2>Violations by rule and destination</h2>']
    summary = [_tally_row("rule", rs.rule, [_td(rs.rule)], rs.tally) for rs in r.rules]
    parts.append(_table("Violating flows by rule", ("rule",) + FIG_HEADERS + SEEN_HEADERS,
                        summary, "rules-table"))
    for rs in r.rules:
        rows = [_tally_row("top_destination", rs.rule,
                           [_td(d.country), _td(d.name), _td(as_text(d.asn, d.as_org))],
                           d.tally, subkey=d.country, item=d.name) for d in rs.destinations]
        more = (f" ({n(rs.more_destinations)} more not shown)" if rs.more_destinations else "")
        parts.append(f"<h3>{e(rs.rule)}</h3>" + _table(
            f"Top destinations by bytes{more}", ("country", "destination", "AS")
            + FIG_HEADERS + SEEN_HEADERS, rows))
    if not r.rules:
        parts.append("<p>No violations in the period.</p>")
    return "".join(parts) + "</section>"


def _tls(r: Report) -> str:
    rows = [_row("tls", t.version, [_td(t.version)] + _figures(t.flows, t.bytes_out, t.bytes_in)
                 + [_td(n(t.quic_flows), "num")], "", "", t.flows, t.bytes_out, t.bytes_in)
            for t in r.tls]
    return ('<section id="tls"><h2>TLS versions</h2><p class="muted">Negotiated version of '
            "judged outbound flows; QUIC counts as TLS 1.3 (RFC 9001) when its version was not "
            'read; "no TLS seen" is neither TLS nor a plaintext protocol (e.g. DNS, unknown).</p>'
            + tls_svg(r) + _table("Flows by TLS version", ("version",) + FIG_HEADERS
                                  + ("of which QUIC",), rows, "tls-table") + "</section>")


def _exceptions(r: Report) -> str:
    used = [_tally_row("exception_used", name, [_td(name)], t)
            for name, t in r.exceptions_used.items()]
    expired = [_tally_row("exception_expired", x.exception,
                          [_td(x.exception), _td(x.owner or ""), _td(x.expired or "")], x.tally,
                          subkey=x.owner or "", item=x.expired or "",
                          extra=[_td(n(x.logged), "num")]) for x in r.exceptions_expired]
    return ('<section id="exceptions"><h2>Exceptions</h2>'
            + _table("Exceptions that exempted flows in the period", ("exception",)
                     + FIG_HEADERS + SEEN_HEADERS, used, "exceptions-used-table")
            + _table("Expired exceptions: flows they would have covered, and expiry entries "
                     "in the audit log", ("exception", "owner", "expired") + FIG_HEADERS
                     + SEEN_HEADERS + ("log entries",), expired, "exceptions-expired-table")
            + "</section>")


def _visibility(r: Report) -> str:
    v = r.visibility
    labels = (("outbound", "judged outbound flows"), ("located", "destination country known"),
              ("tls_seen", "TLS handshake seen"), ("plaintext", "plaintext protocol"),
              ("encrypted_dns", "encrypted DNS (DoT, DoH, DoQ)"),
              ("with_notes", "inspection notes (parse errors, caps)"))
    rows = []
    for key, label in labels:
        t: Tally = getattr(v, key)
        rows.append(_tally_row("visibility", key, [_td(label)], t, times=False, extra=[
            _td(share(t.flows, v.outbound.flows), "num"),
            _td(share(t.bytes_out + t.bytes_in, v.outbound.bytes_out + v.outbound.bytes_in),
                "num")]))
    notes = [_row("inspection_note", k, [_td(k), _td(n(c), "num")]) for k, c in v.notes.items()]
    lat = r.latency
    lat_rows = [_row("latency", k, [_td(label), _td(
        "" if val is None else (f"{val:,}" if k == "count" else f"{val:.6f}"), "num")])
        for k, label, val in (("count", "violations with a detection time", lat.count),
                              ("median_s", "median (s)", lat.median_s),
                              ("p90_s", "90th percentile (s, nearest rank)", lat.p90_s),
                              ("max_s", "maximum (s)", lat.max_s))]
    return ('<section id="visibility"><h2>Visibility and detection</h2>'
            + _table("What the monitor could see of the judged outbound flows", (
                "measure",) + FIG_HEADERS + ("share of flows", "share of bytes"), rows,
                "visibility-table")
            + _table("Inspection notes by kind (flows may carry several)", ("note", "count"),
                     notes)
            + _table("Detection latency of violations: first packet to the deciding packet",
                     ("measure", "value"), lat_rows, "latency-table") + "</section>")


def _policy(r: Report) -> str:
    versions = [_row("policy", p.name, [_td(p.name), _td(p.sha256), _td(when(p.first_seen)),
                                        _td(when(p.last_seen)), _td(n(p.loads), "num"),
                                        _td("yes" if p.in_force_at_start else "")],
                     p.sha256, "in_force_at_start" if p.in_force_at_start else "loaded")
                for p in r.policies]
    events = [_row("policy_event", ev.time, [_td(when(ev.time)), _td(ev.name), _td(ev.sha256),
                                             _td(ev.trigger), _td(ev.result),
                                             _td("; ".join(ev.errors))], ev.sha256, ev.result)
              for ev in r.policy_events]
    return ('<section id="policy"><h2>Policy versions</h2>'
            + ("" if r.policies or r.policy_events else
               '<p class="muted">The input records no policy loads (replay records do not '
               "name the policy that judged them).</p>")
            + _table("Policy versions in force over the period (by SHA-256 of the file)",
                     ("name", "sha256", "first loaded (UTC)", "last loaded (UTC)", "loads",
                      "in force at start"), versions, "policy-table")
            + _table("Policy loads and reloads in the period (refused ones stay out of force)",
                     ("time (UTC)", "name", "sha256", "trigger", "result", "errors"), events,
                     "policy-events-table") + "</section>")


def _inputs(r: Report) -> str:
    files = [_row("input", f.path, [_td(f.path), _td(f.kind), _td(n(f.lines), "num"),
                                    _td(n(f.audit_entries), "num"), _td(n(f.records), "num"),
                                    _td("yes" if f.partial_last_line else ""),
                                    _td("yes" if f.gzip_truncated else "")], f.kind)
             for f in r.inputs]
    counts = [_row("count", k, [_td(k), _td(n(c), "num")]) for k, c in r.counts.items()]
    monitor = [_row("monitor", t, [_td(when(t)), _td(kind)], kind)
               for t, kind in r.monitor_events]
    return ('<section id="inputs"><h2>Inputs</h2>'
            + _table("Files read, in order", ("file", "kind", "lines", "audit entries",
                                               "flow records", "partial last line",
                                               "gzip cut short"), files, "inputs-table")
            + _table("Entries in the period", ("entry", "count"), counts, "counts-table")
            + (_table("Monitor starts and stops", ("time (UTC)", "event"), monitor)
               if monitor else "") + "</section>")


def render_html(report: Report) -> str:
    """The whole page: header, then one section per part of the evidence."""
    body = "".join(f(report) for f in (_header, _summary, _flow_map, _over_time, _rules, _tls,
                                       _exceptions, _visibility, _policy, _inputs))
    title = f"Data residency evidence report {when(report.period_from)[:10]} to " \
            f"{when(report.period_to)[:10]}"
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{e(title)}</title><style>{CSS}</style></head><body>{body}</body></html>\n")
