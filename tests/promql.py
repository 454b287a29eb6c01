"""PromQL as Grafana sends it, and the few facts about an expression the tests check.

No PromQL parser of our own judges an expression: Prometheus does, by running
it. This module only does what Grafana does before a query leaves the browser
(substitute ``$__rate_interval``, ``$__range`` and template variables) and
splits an expression into the pieces worth running on their own:

- :func:`selectors`: every series selector (``name{matchers}``), so a test
  can say *which* metric or matcher came back empty, not just that a panel did;
- :func:`with_bool`: the expression with every comparison turned into its
  ``bool`` form (``x > 0`` becomes ``x > bool 0``), so an alerting rule that
  is rightly silent still shows that its series flow through the whole
  expression (a silent rule and a rule with a typo look alike otherwise).

Both walk a small tokenizer that knows strings, label matchers, range
brackets, durations, comparison operators and grouping clauses: enough for
the dashboards and rules of this project, and it refuses what it does not know.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["GrafanaTimes", "Token", "finite_values", "grafana_substitute", "selectors",
           "tokens", "with_bool"]

_TOKEN = re.compile(r"""
      (?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
    | (?P<brace>\{(?:[^}"'`]|"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)*\})
    | (?P<range>\[[^\]]*\])
    | (?P<var>\$\{[^}]*\}|\$\w+)
    | (?P<dur>(?:\d+(?:ms|[smhdwy]))+\b)
    | (?P<num>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|0x[0-9a-fA-F]+)
    | (?P<ident>[A-Za-z_:][\w:]*)
    | (?P<cmp>==|!=|>=|<=|>|<)
    | (?P<op>[-+*/%^(),@])
    | (?P<ws>\s+|\#[^\n]*)
    | (?P<bad>.)
""", re.VERBOSE)

_GROUPING = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
_KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "inf", "nan", "atan2",
                       *_GROUPING})


@dataclass(frozen=True)
class Token:
    kind: str
    text: str
    end: int      # offset just past the token in the expression


def tokens(expr: str) -> list[Token]:
    """The expression's tokens, whitespace and comments dropped; ValueError on a stray char."""
    out = []
    for m in _TOKEN.finditer(expr):
        kind = m.lastgroup
        assert kind is not None
        if kind == "bad":
            raise ValueError(f"unexpected {m.group()!r} at {m.start()} in {expr!r}")
        if kind != "ws":
            out.append(Token(kind, m.group(), m.end()))
    return out


def _significant(toks: list[Token], i: int) -> Token | None:
    return toks[i] if i < len(toks) else None


def selectors(expr: str) -> list[str]:
    """Every series selector in ``expr`` (``name``, ``name{...}`` or ``{...}``), in order.

    Function and aggregation names (followed by ``(`` or a grouping clause),
    keywords and the label lists of ``by (...)``/``on (...)`` are not selectors.
    """
    toks = tokens(expr)
    found: list[str] = []
    i = 0
    while i < len(toks):
        tok = toks[i]
        if tok.kind == "ident" and tok.text in _GROUPING:
            i = _skip_label_list(toks, i + 1)
            continue
        if tok.kind == "ident" and tok.text not in _KEYWORDS:
            nxt = _significant(toks, i + 1)
            if nxt is not None and (nxt.text == "(" or nxt.text in ("by", "without")):
                i += 1                       # a function or an aggregation
                continue
            if nxt is not None and nxt.kind == "brace":
                found.append(tok.text + nxt.text)
                i += 2
                continue
            found.append(tok.text)
        elif tok.kind == "brace":
            found.append(tok.text)
        i += 1
    return found


def _skip_label_list(toks: list[Token], i: int) -> int:
    """Past ``( label, ... )`` after a grouping keyword (``group_left`` may have none)."""
    if i < len(toks) and toks[i].text == "(":
        while i < len(toks) and toks[i].text != ")":
            i += 1
        return i + 1
    return i


def with_bool(expr: str) -> str:
    """``expr`` with each comparison in its ``bool`` form: a filter becomes a 0/1 value.

    ``sum(x) > 0`` gives nothing while all is well; ``sum(x) > bool 0`` gives 0,
    which proves ``sum(x)`` had a series to compare.
    """
    toks = tokens(expr)
    out, copied = [], 0
    for i, tok in enumerate(toks):
        nxt = _significant(toks, i + 1)
        if tok.kind == "cmp" and not (nxt is not None and nxt.text == "bool"):
            out.append(expr[copied:tok.end] + " bool")
            copied = tok.end
    return "".join(out) + expr[copied:]


# --------------------------------------------------------------------------------------------
# Grafana's variables
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class GrafanaTimes:
    """What Grafana knows when it builds a query: the time range, step and scrape interval."""

    range_s: int
    step_s: int
    scrape_s: int

    def builtins(self) -> dict[str, str]:
        # Grafana: $__rate_interval = max($__interval + scrape interval, 4 x scrape interval),
        # the scrape interval being the data source's "timeInterval".
        rate = max(self.step_s + self.scrape_s, 4 * self.scrape_s)
        return {"__rate_interval": f"{rate}s", "__interval": f"{self.step_s}s",
                "__interval_ms": str(self.step_s * 1000), "__range": f"{self.range_s}s",
                "__range_s": str(self.range_s), "__range_ms": str(self.range_s * 1000)}


# $1 (a label_replace group) is not a variable: Grafana names start with a letter or _.
_VARIABLE = re.compile(r"\$\{([A-Za-z_]\w*)(?::(\w+))?\}|\$([A-Za-z_]\w*)|\[\[([A-Za-z_]\w*)\]\]")


def grafana_substitute(expr: str, variables: Mapping[str, str], times: GrafanaTimes) -> str:
    """``expr`` with Grafana's built-ins and the dashboard's variables replaced.

    ``variables`` maps a variable to the text Grafana would put in its place
    (``.*`` for "All" with that allValue, or an escaped value). An unknown
    variable raises KeyError: Grafana would leave it in and Prometheus refuse it.
    """
    values = {**times.builtins(), **variables}

    def replace(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(3) or m.group(4)
        if name not in values:
            raise KeyError(f"{expr!r} uses ${name}, which the dashboard does not define")
        return values[name]

    return _VARIABLE.sub(replace, expr)


def regex_escape(value: str) -> str:
    """A single selected value as Grafana's Prometheus data source puts it in ``=~"..."``."""
    escaped = re.sub(r"[$^*{}\[\]'+?.()|\\]", lambda m: "\\" + m.group(), value)
    return escaped.replace("\\", "\\\\")   # and once more for the PromQL string literal


def finite_values(data: Mapping[str, Any]) -> Iterator[float]:
    """Every finite sample value of an API ``data`` (vector, matrix or scalar)."""
    kind, result = data["resultType"], data["result"]
    if kind in ("scalar", "string"):
        points = [result]
    elif kind == "vector":
        points = [item["value"] for item in result]
    else:
        points = [p for item in result for p in item["values"]]
    for _ts, text in points:
        value = float(text)
        if math.isfinite(value):
            yield value
