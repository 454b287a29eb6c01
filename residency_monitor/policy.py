"""Residency policy: which destinations and which TLS each class of data may use.

A policy is a YAML file (format: ``configs/policies/README.md``). It names
*zones* (sets of internal networks, each holding one *classification* of data),
gives each classification its rules (permitted and conditional destination
countries, minimum TLS version, whether plaintext and unlocated destinations
are tolerated) and lists approved, expiring *exceptions*.

Loading (:func:`load_policy`, :func:`parse_policy`) is strict and reports every
problem at once, each with file, line and key path, so ``policy check`` can
show an administrator the whole list; a file with any error is refused whole.

Evaluation (:func:`evaluate`) is a pure function of the flow's facts and the
policy: no I/O and no clock (exception expiry is judged at the packet time the
facts carry), so a replayed capture is judged exactly as the live traffic was.

Semantics, in the order :func:`evaluate` applies them:

* Only ``outbound`` flows are judged; other directions, and flows whose app
  (or transport) is listed in ``not_evaluated_apps``, are ``not_evaluated``.
* The zone is the longest-prefix match of the client address, else
  ``default_zone``; its classification supplies the rules.
* ``geo_unknown``: the destination has no country and the classification
  says ``unlocated: violation`` (fail closed); residency is then not judged.
  With ``permitted_countries: ["*"]`` the country does not matter at all.
* ``residency``: the country is not permitted. A conditional country is a
  residency violation too (until an exception approves it); the explanation
  quotes the condition.
* Only a flow that exchanged payload is judged on its transport security,
  by exactly one of three rules:
  ``tls_version`` when a TLS version is known (QUIC is TLS 1.3 by RFC 9001
  when its version was not read), ``plaintext`` for a known plaintext protocol
  that was not upgraded (when the classification forbids plaintext), else
  ``no_handshake`` (TLS without a ServerHello, STARTTLS without a version, an
  unknown protocol) when the classification forbids plaintext, since a flow
  whose handshake was never seen cannot be shown to be encrypted.
  ``dns`` (and ``mdns``) are judged on residency only; ``ssh`` is encrypted by
  design and has no TLS version to check.
* Exceptions whose zone list and match fit are taken in file order; an
  expired one never applies (it is reported as ``exception_expired``); the
  first valid one waives the violations in its ``waives`` list. Nothing
  remaining: ``exempt`` (the exception is named); something remaining:
  ``violation``.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from importlib import resources
from pathlib import Path
from typing import TypeVar

import yaml

from .networks import PrefixMap
from .tls_names import version_name
from .yamlcheck import ConfigError, Issue, NodeReader, compose, join_path, kind, suggest

__all__ = [
    "COUNTRY_CODES", "EEA_COUNTRIES", "EU_MEMBERS", "RULES", "VERDICTS", "Classification",
    "Exemption", "FlowFacts", "Policy", "PolicyError", "PolicyIssue", "Verdict", "Zone",
    "default_policy", "evaluate", "explain", "load_policy", "parse_policy", "tls_version_code",
    "zone_of",
]

# --------------------------------------------------------------------------------------------
# Data: country codes, rule names, protocol classes, TLS versions. Kept apart from the logic.
# --------------------------------------------------------------------------------------------

#: ISO 3166-1 alpha-2, every officially assigned code (249; checked against tzdata's
#: iso3166.tab). User-assigned (XK) and exceptionally reserved (EU, UK, EL) codes are not here.
COUNTRY_CODES: frozenset[str] = frozenset((
    "AD", "AE", "AF", "AG", "AI", "AL", "AM", "AO", "AQ", "AR", "AS", "AT", "AU", "AW",
    "AX", "AZ", "BA", "BB", "BD", "BE", "BF", "BG", "BH", "BI", "BJ", "BL", "BM", "BN",
    "BO", "BQ", "BR", "BS", "BT", "BV", "BW", "BY", "BZ", "CA", "CC", "CD", "CF", "CG",
    "CH", "CI", "CK", "CL", "CM", "CN", "CO", "CR", "CU", "CV", "CW", "CX", "CY", "CZ",
    "DE", "DJ", "DK", "DM", "DO", "DZ", "EC", "EE", "EG", "EH", "ER", "ES", "ET", "FI",
    "FJ", "FK", "FM", "FO", "FR", "GA", "GB", "GD", "GE", "GF", "GG", "GH", "GI", "GL",
    "GM", "GN", "GP", "GQ", "GR", "GS", "GT", "GU", "GW", "GY", "HK", "HM", "HN", "HR",
    "HT", "HU", "ID", "IE", "IL", "IM", "IN", "IO", "IQ", "IR", "IS", "IT", "JE", "JM",
    "JO", "JP", "KE", "KG", "KH", "KI", "KM", "KN", "KP", "KR", "KW", "KY", "KZ", "LA",
    "LB", "LC", "LI", "LK", "LR", "LS", "LT", "LU", "LV", "LY", "MA", "MC", "MD", "ME",
    "MF", "MG", "MH", "MK", "ML", "MM", "MN", "MO", "MP", "MQ", "MR", "MS", "MT", "MU",
    "MV", "MW", "MX", "MY", "MZ", "NA", "NC", "NE", "NF", "NG", "NI", "NL", "NO", "NP",
    "NR", "NU", "NZ", "OM", "PA", "PE", "PF", "PG", "PH", "PK", "PL", "PM", "PN", "PR",
    "PS", "PT", "PW", "PY", "QA", "RE", "RO", "RS", "RU", "RW", "SA", "SB", "SC", "SD",
    "SE", "SG", "SH", "SI", "SJ", "SK", "SL", "SM", "SN", "SO", "SR", "SS", "ST", "SV",
    "SX", "SY", "SZ", "TC", "TD", "TF", "TG", "TH", "TJ", "TK", "TL", "TM", "TN", "TO",
    "TR", "TT", "TV", "TW", "TZ", "UA", "UG", "UM", "US", "UY", "UZ", "VA", "VC", "VE",
    "VG", "VI", "VN", "VU", "WF", "WS", "YE", "YT", "ZA", "ZM", "ZW",
))

#: The 27 EU member states (2026).
EU_MEMBERS: frozenset[str] = frozenset((
    "AT", "BE", "BG", "CY", "CZ", "DE", "DK", "EE", "ES", "FI", "FR", "GR", "HR", "HU",
    "IE", "IT", "LT", "LU", "LV", "MT", "NL", "PL", "PT", "RO", "SE", "SI", "SK",
))

#: The European Economic Area: the EU plus Iceland, Liechtenstein and Norway.
EEA_COUNTRIES: frozenset[str] = EU_MEMBERS | {"IS", "LI", "NO"}

#: Codes people write that are not ISO 3166-1 countries, and what to write instead.
_COUNTRY_HINTS: dict[str, str] = {
    "EU": "the EU is not a country: list its 27 member states (for the EEA add IS, LI, NO)",
    "EEA": "the EEA is not a country: list its 30 member states (the EU 27 plus IS, LI, NO)",
    "UK": "the United Kingdom is GB in ISO 3166-1",
    "EL": "Greece is GR in ISO 3166-1 (EL is the EU's own abbreviation)",
    "XK": "XK (Kosovo) is user-assigned, not an officially assigned ISO 3166-1 code",
}

#: The rules a verdict can report, in the order they are checked and listed.
RULES: tuple[str, ...] = ("geo_unknown", "residency", "plaintext", "tls_version", "no_handshake")

#: Protocols that carry their payload in the clear unless upgraded (STARTTLS).
PLAINTEXT_APPS: frozenset[str] = frozenset(
    {"http", "ftp", "smtp", "pop3", "imap", "telnet", "ldap"})
#: Always TLS 1.3 when the version could not be read (RFC 9001 section 4.2).
QUIC_APPS: frozenset[str] = frozenset({"quic"})
#: Encrypted by their own protocol, with no TLS version to judge.
SELF_ENCRYPTED_APPS: frozenset[str] = frozenset({"ssh"})
#: Name lookups: judged on where they go, not on their transport security.
RESIDENCY_ONLY_APPS: frozenset[str] = frozenset({"dns", "mdns"})

#: Values of ``min_tls``, and their order.
MIN_TLS_NAMES: dict[str, int] = {
    "SSL 3.0": 0x0300, "TLS 1.0": 0x0301, "TLS 1.1": 0x0302, "TLS 1.2": 0x0303, "TLS 1.3": 0x0304,
}
#: Negotiated version codes -> comparable rank (DTLS mapped to its TLS equivalent).
_TLS_RANK: dict[int, int] = {
    0x0002: 0x0200, 0x0300: 0x0300, 0x0301: 0x0301, 0x0302: 0x0302, 0x0303: 0x0303,
    0x0304: 0x0304, 0xFEFF: 0x0302, 0xFEFD: 0x0303, 0xFEFC: 0x0304,
}
_TLS13_DRAFT_PREFIX = 0x7F

T = TypeVar("T")

VERDICTS: tuple[str, ...] = ("compliant", "violation", "exempt", "not_evaluated")
EVALUATED_DIRECTION = "outbound"

# --------------------------------------------------------------------------------------------
# The policy model
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Classification:
    """The rules for one class of data (public, internal, personal, sensitive, ...)."""

    name: str
    permitted: frozenset[str]              # ISO codes; "*" = any country
    conditional: tuple[tuple[str, str], ...]  # (code or "*", condition), "*" = any other
    min_tls: str                           # a MIN_TLS_NAMES key
    plaintext: str                         # "allow" | "forbid"
    unlocated: str                         # "violation" | "allow"
    otherwise: str | None = None           # what a destination outside both lists needs

    @property
    def any_country(self) -> bool:
        return "*" in self.permitted

    def condition(self, country: str) -> str | None:
        """The condition under which ``country`` may receive data, if it is conditional."""
        star = None
        for code, text in self.conditional:
            if code == country:
                return text
            if code == "*":
                star = text
        return star


@dataclass(frozen=True, slots=True)
class Zone:
    """A named set of internal networks holding one classification of data."""

    name: str
    networks: tuple[str, ...]
    classification: str
    owner: str | None = None


@dataclass(frozen=True, slots=True)
class Exemption:
    """One entry of ``exceptions:``: an approved, expiring waiver of named rules.

    Called an exemption in code so it is not mistaken for a Python exception.
    """

    id: str
    sni: tuple[str, ...]
    cidr: tuple[str, ...]
    asn: tuple[int, ...]
    country: tuple[str, ...]
    zones: tuple[str, ...] | None          # None = every zone
    waives: tuple[str, ...]
    reason: str
    owner: str
    expires: date
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = field(
        default=(), repr=False)


@dataclass(frozen=True, slots=True, eq=False)
class Policy:
    """A loaded, validated policy. ``sha256`` is of the file's bytes (audit, metrics)."""

    name: str
    title: str
    legal_basis: str
    as_of: date
    source: str
    sha256: str
    classifications: dict[str, Classification]
    zones: tuple[Zone, ...]
    default_zone: Zone
    exceptions: tuple[Exemption, ...]
    not_evaluated_apps: frozenset[str]
    utc_offset: timedelta = timedelta(0)
    notice: str | None = None
    sources: tuple[str, ...] = ()
    _zone_map: PrefixMap[tuple[Zone, str]] = field(default_factory=PrefixMap, repr=False)


PolicyIssue = Issue


class PolicyError(ConfigError):
    """A policy file was refused; ``errors`` lists every problem found."""


# --------------------------------------------------------------------------------------------
# Loading: YAML nodes (for their line numbers) -> validated Policy, every error collected
# --------------------------------------------------------------------------------------------

_TAG = "tag:yaml.org,2002:"
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
_APP_RE = re.compile(r"[a-z0-9][a-z0-9_.+-]{0,31}\Z")
_DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}\Z")
_OFFSET_RE = re.compile(r"([+-])(\d{2}):(\d{2})\Z")
_LABEL_RE = re.compile(r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?\Z")

_TOP_KEYS = (("policy", "default_zone", "classifications"),
             ("zones", "not_evaluated_apps", "exceptions"))
_HEADER_KEYS = (("name", "title", "legal_basis", "as_of"), ("notice", "sources", "utc_offset"))
_CLASS_KEYS = (("permitted_countries", "min_tls"),
               ("conditional_countries", "otherwise", "plaintext", "unlocated", "description"))
_ZONE_KEYS = (("name", "networks", "classification"), ("owner", "description"))
_DEFAULT_ZONE_KEYS = (("name", "classification"), ("owner", "description"))
_EXC_KEYS = (("id", "match", "reason", "owner", "expires"), ("zones", "waives"))
_MATCH_KINDS = ("sni", "cidr", "asn", "country")
_PLAINTEXT_CHOICES = ("allow", "forbid")
_UNLOCATED_CHOICES = ("violation", "allow")


class _Reader(NodeReader):
    """The policy's own value kinds, on top of the generic node reader."""

    def name(self, node: yaml.Node, path: str) -> str | None:
        value = self.scalar(node, path, "a name")
        if value is not None and not _NAME_RE.match(value):
            self.error(node, path, f"bad name {value!r}: use letters, digits, '-', '_' and '.' "
                                   "(at most 64; it becomes a metric label)")
            return None
        return value

    def app(self, node: yaml.Node, path: str) -> str | None:
        value = self.scalar(node, path, "an app name")
        if value is not None and not _APP_RE.match(value):
            self.error(node, path, f"bad app name {value!r}: lower-case, as flow records spell "
                                   "it (e.g. ntp, icmp)")
            return None
        return value

    def country(self, node: yaml.Node, path: str, star: bool = False) -> str | None:
        """An ISO 3166-1 alpha-2 code (or ``*`` where allowed), with a hint when it is not."""
        value = self.scalar(node, path, "a country code")
        if value is None:
            return None
        if value in COUNTRY_CODES or (star and value == "*"):
            return value
        hint = _COUNTRY_HINTS.get(value.upper())
        if hint is None and value.upper() in COUNTRY_CODES:
            hint = f"country codes are upper case: {value.upper()}"
        if hint is None and value == "*":
            hint = "'*' (any country) is not allowed here"
        self.error(node, path, f"unknown country code {value!r}"
                               + (f": {hint}" if hint else " (not an ISO 3166-1 alpha-2 code)"))
        return None

    def tls(self, node: yaml.Node, path: str) -> str | None:
        value = self.scalar(node, path, "a TLS version name")
        if value is not None and value not in MIN_TLS_NAMES:
            names = ", ".join(repr(n) for n in MIN_TLS_NAMES)
            self.error(node, path, f"unknown TLS version {value!r}: expected one of {names}")
            return None
        return value

    def date(self, node: yaml.Node, path: str) -> date | None:
        """A calendar date, written 2027-06-30 (quoted or not)."""
        raw = self.scalar(node, path, "a date (YYYY-MM-DD)")
        if raw is None:
            return None
        try:
            if node.tag == _TAG + "timestamp":
                value = self._ctor.construct_yaml_timestamp(node)
            elif node.tag == _TAG + "str" and _DATE_RE.match(raw):
                value = date.fromisoformat(raw)
            else:
                raise ValueError("expected YYYY-MM-DD")
        except ValueError as exc:
            self.error(node, path, f"bad date {raw!r}: {exc}")
            return None
        if isinstance(value, datetime):
            self.error(node, path, f"bad date {raw!r}: expected a date without a time")
            return None
        return value

    def asn(self, node: yaml.Node, path: str) -> int | None:
        raw = self.scalar(node, path, "an AS number")
        if raw is None:
            return None
        if node.tag != _TAG + "int":
            digits = raw.upper().removeprefix("AS")
            hint = f"; write the number: {digits}" if digits.isdigit() else ""
            self.error(node, path, f"expected an AS number, got {kind(node)}{hint}")
            return None
        value = self._ctor.construct_yaml_int(node)
        if not 0 <= value < 2**32:
            self.error(node, path, f"AS number {value} out of range (0 to 4294967295)")
            return None
        return value

    def sni_pattern(self, node: yaml.Node, path: str) -> str | None:
        """A host name, or ``*.`` and a domain (matching its sub-domains, not itself)."""
        raw = self.scalar(node, path, "a host name or *.domain pattern")
        if raw is None:
            return None
        value = raw.lower()
        if value.startswith("*."):
            if "*" in value[2:] or not _is_host_name(value[2:]):
                self.error(node, path, f"malformed wildcard {raw!r}: write '*.' followed by a "
                                       "domain, e.g. '*.example.com'")
                return None
        elif "*" in value:
            self.error(node, path, f"malformed wildcard {raw!r}: '*' is allowed only as the "
                                   "whole first label, e.g. '*.example.com'")
            return None
        elif not _is_host_name(value):
            self.error(node, path, f"bad host name {raw!r}")
            return None
        return value

    def utc_offset(self, node: yaml.Node, path: str) -> timedelta | None:
        raw = self.scalar(node, path, "a UTC offset such as '+08:00'")
        if raw is None:
            return None
        m = _OFFSET_RE.match(raw)
        if not m or int(m[2]) > 14 or int(m[3]) > 59:
            self.error(node, path, f"bad UTC offset {raw!r}: write it as '+08:00' (quoted)")
            return None
        sign = -1 if m[1] == "-" else 1
        return sign * timedelta(hours=int(m[2]), minutes=int(m[3]))




def _is_host_name(name: str) -> bool:
    labels = name.split(".")
    return 0 < len(name) <= 253 and all(_LABEL_RE.match(label) for label in labels)


# -- sections --------------------------------------------------------------------------------


@dataclass
class _Header:
    name: str
    title: str
    legal_basis: str
    as_of: date
    notice: str | None
    sources: tuple[str, ...]
    utc_offset: timedelta


def _read_header(r: _Reader, node: yaml.Node) -> _Header | None:
    m = r.mapping(node, "policy", _HEADER_KEYS)
    if m is None:
        return None
    name = r.name(m["name"], "policy.name") if "name" in m else None
    title = r.text(m["title"], "policy.title") if "title" in m else None
    basis = r.text(m["legal_basis"], "policy.legal_basis") if "legal_basis" in m else None
    as_of = r.date(m["as_of"], "policy.as_of") if "as_of" in m else None
    notice = r.text(m["notice"], "policy.notice") if "notice" in m else None
    sources = r.items(m["sources"], "policy.sources", r.text) if "sources" in m else []
    offset = (r.utc_offset(m["utc_offset"], "policy.utc_offset") if "utc_offset" in m
              else timedelta(0))
    if None in (name, title, basis, as_of, sources, offset):
        return None
    assert name and title and basis and as_of and sources is not None and offset is not None
    return _Header(name, title, basis, as_of, notice, tuple(sources), offset)


def _read_classification(r: _Reader, node: yaml.Node, path: str,
                         name: str) -> Classification | None:
    m = r.mapping(node, path, _CLASS_KEYS)
    if m is None:
        return None
    p_node = m.get("permitted_countries")
    permitted = (r.each(p_node, join_path(path, "permitted_countries"),
                        functools.partial(r.country, star=True)) if p_node else None)
    conditional = (_read_conditional(r, m["conditional_countries"],
                                     join_path(path, "conditional_countries"))
                   if "conditional_countries" in m else [])
    min_tls = r.tls(m["min_tls"], join_path(path, "min_tls")) if "min_tls" in m else None
    plaintext = (r.choice(m["plaintext"], join_path(path, "plaintext"), _PLAINTEXT_CHOICES)
                 if "plaintext" in m else "forbid")
    unlocated = (r.choice(m["unlocated"], join_path(path, "unlocated"), _UNLOCATED_CHOICES)
                 if "unlocated" in m else "violation")
    otherwise = r.text(m["otherwise"], join_path(path, "otherwise")) if "otherwise" in m else ""
    if "description" in m:
        r.text(m["description"], join_path(path, "description"))
    lists_ok = (p_node is not None and permitted is not None and conditional is not None
                and _check_country_lists(r, p_node, path, permitted, conditional))
    if not lists_ok or None in (permitted, conditional, min_tls, plaintext, unlocated,
                                otherwise):
        return None
    assert permitted is not None and conditional is not None
    assert min_tls and plaintext and unlocated and otherwise is not None
    return Classification(name, frozenset(c for c in permitted if c),
                          tuple((c, t) for c, t, _ in conditional),
                          min_tls, plaintext, unlocated, otherwise or None)


def _read_conditional(r: _Reader, node: yaml.Node,
                      path: str) -> list[tuple[str, str, yaml.Node]] | None:
    """``{CC: condition}`` as (code, condition, key node); ``"*"`` = every other country."""
    if not isinstance(node, yaml.MappingNode):
        r.wrong_type(node, path, "a mapping of country code to condition")
        return None
    out: list[tuple[str, str, yaml.Node]] = []
    for code, (key_node, value) in r.entries(node, path).items():
        country = r.country(key_node, join_path(path, code), star=True)
        text = r.text(value, join_path(path, code))
        if country is not None and text is not None:
            out.append((country, text, key_node))
    return out


def _check_country_lists(r: _Reader, p_node: yaml.Node, path: str,
                         permitted: list[str | None],
                         conditional: list[tuple[str, str, yaml.Node]]) -> bool:
    """A country is permitted or conditional, never both; ``*`` stands alone.

    Runs over the codes that could be read, so these errors come with the others.
    """
    ok = None not in permitted
    if "*" in permitted and len(permitted) > 1:
        r.error(p_node, join_path(path, "permitted_countries"),
                "'*' already permits every country: list nothing else")
        ok = False
    seen: set[str] = set()
    for i, code in enumerate(permitted):
        if code is not None and code in seen:
            r.error(p_node.value[i], f"{path}.permitted_countries[{i}]", f"{code} listed twice")
            ok = False
        seen.add(code or "")
    for code, _, key_node in conditional:
        if code in seen or "*" in seen:
            r.error(key_node, f"{path}.conditional_countries.{code}",
                    f"{code} is both permitted and conditional")
            ok = False
    return ok


def _read_classifications(r: _Reader, node: yaml.Node) -> dict[str, Classification] | None:
    if not isinstance(node, yaml.MappingNode):
        r.wrong_type(node, "classifications", "a mapping of classification name to rules")
        return None
    if not node.value:
        r.error(node, "classifications", "must not be empty")
        return None
    out: dict[str, Classification] = {}
    ok = True
    for cname, (key_node, value) in r.entries(node, "classifications").items():
        path = join_path("classifications", cname)
        cls = (_read_classification(r, value, path, cname)
               if r.name(key_node, path) is not None else None)
        if cls is None:
            ok = False
        else:
            out[cname] = cls
    return out if ok else None


def _class_names(top: dict[str, yaml.Node]) -> set[str] | None:
    """Classification names as written, for references, even if their rules had errors."""
    node = top.get("classifications")
    if not isinstance(node, yaml.MappingNode) or not node.value:
        return None
    return {k.value for k, _ in node.value if isinstance(k, yaml.ScalarNode)}


@dataclass
class _ZoneDraft:
    """A zone as read: the parts that could be read, for the cross-checks between zones."""

    name: str | None
    name_node: yaml.Node | None
    networks: list[tuple[int, str, yaml.Node]]   # (index in the list, network, its node)
    zone: Zone | None


def _read_zone(r: _Reader, node: yaml.Node, path: str,
               keys: tuple[tuple[str, ...], tuple[str, ...]],
               class_names: set[str] | None) -> _ZoneDraft:
    m = r.mapping(node, path, keys) or {}
    name = r.name(m["name"], join_path(path, "name")) if "name" in m else None
    n_node = m.get("networks")
    networks = (r.each(n_node, join_path(path, "networks"), r.network, nonempty=True)
                if n_node is not None else [])
    cls = (r.name(m["classification"], join_path(path, "classification"))
           if "classification" in m else None)
    if cls is not None and class_names is not None and cls not in class_names:
        r.error(m["classification"], join_path(path, "classification"),
                f"unknown classification {cls!r}{suggest(cls, class_names)} "
                f"(defined: {', '.join(sorted(class_names))})")
        cls = None
    owner = r.text(m["owner"], join_path(path, "owner")) if "owner" in m else ""
    if "description" in m:
        r.text(m["description"], join_path(path, "description"))
    items = getattr(n_node, "value", [])
    valid = [(i, net, items[i]) for i, net in enumerate(networks or []) if net]
    complete = (name is not None and networks is not None and None not in networks
                and cls is not None and owner is not None and bool(m))
    zone = (Zone(name, tuple(n for _, n, _ in valid), cls, owner or None)
            if complete and name and cls else None)
    return _ZoneDraft(name, m.get("name"), valid, zone)


def _read_zones(r: _Reader, node: yaml.Node, class_names: set[str] | None) -> list[_ZoneDraft]:
    """Zones in file order; names unique, and no network in two zones."""
    drafts = [_read_zone(r, item, f"zones[{i}]", _ZONE_KEYS, class_names)
              for i, item in enumerate(r.seq(node, "zones") or [])]
    first_line: dict[str, int] = {}
    owner: dict[str, tuple[str, str]] = {}
    for i, d in enumerate(drafts):
        if d.name is not None and d.name_node is not None:
            if d.name in first_line:
                r.error(d.name_node, f"zones[{i}].name", f"duplicate zone name {d.name!r} "
                                                         f"(first at line {first_line[d.name]})")
                d.zone = None
            first_line.setdefault(d.name, d.name_node.start_mark.line + 1)
        for j, net, net_node in d.networks:
            key = f"zones[{i}].networks[{j}]"
            if net in owner:
                other, where = owner[net]
                r.error(net_node, key, f"network {net} is already in zone {other!r} ({where}): "
                                       "a network belongs to one zone only")
                d.zone = None
            else:
                owner[net] = (d.name or f"zones[{i}]", key)
    return drafts


def _read_default_zone(r: _Reader, node: yaml.Node, class_names: set[str] | None,
                       zones: list[_ZoneDraft]) -> _ZoneDraft:
    draft = _read_zone(r, node, "default_zone", _DEFAULT_ZONE_KEYS, class_names)
    if draft.name is not None and any(z.name == draft.name for z in zones):
        r.error(draft.name_node, "default_zone.name",
                f"duplicate zone name {draft.name!r}: the default zone needs a name of its own")
        draft.zone = None
    return draft


def _read_match(r: _Reader, node: yaml.Node, path: str) -> dict[str, list] | None:
    m = r.mapping(node, path, ((), _MATCH_KINDS))
    if m is None:
        return None
    if not m:
        if not node.value:
            r.error(node, path, "an exception must match something: give at least one of "
                                + ", ".join(_MATCH_KINDS))
        return None
    readers = {"sni": r.sni_pattern, "cidr": r.network, "asn": r.asn, "country": r.country}
    out = {kind: r.items(value, join_path(path, kind), readers[kind], nonempty=True)
           for kind, value in m.items()}
    return {k: v for k, v in out.items() if v is not None} if None not in out.values() else None


def _read_waives(r: _Reader, node: yaml.Node, path: str) -> list[str] | None:
    def rule(item: yaml.Node, item_path: str) -> str | None:
        value = r.scalar(item, item_path, "a rule name")
        if value is not None and value not in RULES:
            r.error(item, item_path, f"unknown rule {value!r}{suggest(value, RULES)}: "
                                     f"rules are {', '.join(RULES)}")
            return None
        return value
    return r.items(node, path, rule, nonempty=True)


def _read_exception_zones(r: _Reader, node: yaml.Node, path: str,
                          zone_names: set[str]) -> list[str] | None:
    def zone(item: yaml.Node, item_path: str) -> str | None:
        value = r.name(item, item_path)
        if value is not None and value not in zone_names:
            r.error(item, item_path, f"unknown zone {value!r}{suggest(value, zone_names)} "
                                     f"(zones: {', '.join(sorted(zone_names))})")
            return None
        return value
    return r.items(node, path, zone, nonempty=True)


def _read_exception(r: _Reader, node: yaml.Node, path: str,
                    zone_names: set[str]) -> tuple[str | None, Exemption | None]:
    """(the id as read, the exception if it is valid)."""
    m = r.mapping(node, path, _EXC_KEYS)
    if m is None:
        return None, None
    ident = r.name(m["id"], join_path(path, "id")) if "id" in m else None
    match = _read_match(r, m["match"], join_path(path, "match")) if "match" in m else None
    zones = (_read_exception_zones(r, m["zones"], join_path(path, "zones"), zone_names)
             if "zones" in m else [])
    waives = (_read_waives(r, m["waives"], join_path(path, "waives")) if "waives" in m
              else ["residency"])
    reason = r.text(m["reason"], join_path(path, "reason")) if "reason" in m else None
    owner = r.text(m["owner"], join_path(path, "owner")) if "owner" in m else None
    expires = r.date(m["expires"], join_path(path, "expires")) if "expires" in m else None
    if (ident is None or match is None or zones is None or waives is None or reason is None
            or owner is None or expires is None):
        return ident, None
    cidr = tuple(match.get("cidr", ()))
    return ident, Exemption(
        id=ident, sni=tuple(match.get("sni", ())), cidr=cidr, asn=tuple(match.get("asn", ())),
        country=tuple(match.get("country", ())), zones=tuple(zones) if "zones" in m else None,
        waives=tuple(w for w in RULES if w in waives), reason=reason, owner=owner,
        expires=expires, networks=tuple(ipaddress.ip_network(c) for c in cidr))


def _value_node(node: yaml.Node, key: str) -> yaml.Node:
    """The value of ``key`` in a mapping node (for an error's line), else the node itself."""
    for k, v in getattr(node, "value", ()):
        if isinstance(k, yaml.ScalarNode) and k.value == key:
            return v
    return node


def _read_exceptions(r: _Reader, node: yaml.Node,
                     zone_names: set[str]) -> list[Exemption] | None:
    out: list[Exemption] = []
    ok = True
    first_line: dict[str, int] = {}
    for i, exc_node in enumerate(r.seq(node, "exceptions") or []):
        ident, exc = _read_exception(r, exc_node, f"exceptions[{i}]", zone_names)
        if ident is not None and ident in first_line:
            r.error(_value_node(exc_node, "id"), f"exceptions[{i}].id",
                    f"duplicate exception id {ident!r} (first at line {first_line[ident]})")
            ok = False
        if ident is not None:
            first_line.setdefault(ident, exc_node.start_mark.line + 1)
        if exc is None:
            ok = False
        else:
            out.append(exc)
    return out if ok and isinstance(node, yaml.SequenceNode) else None


def _build(r: _Reader, root: yaml.Node, source: str, sha256: str) -> Policy | None:
    top = r.mapping(root, "", _TOP_KEYS)
    if top is None:
        return None
    header = _read_header(r, top["policy"]) if "policy" in top else None
    class_names = _class_names(top)
    classes = (_read_classifications(r, top["classifications"])
               if "classifications" in top else None)
    drafts = _read_zones(r, top["zones"], class_names) if "zones" in top else []
    default = (_read_default_zone(r, top["default_zone"], class_names, drafts)
               if "default_zone" in top else None)
    zone_names = {d.name for d in [*drafts, *([default] if default else [])] if d.name}
    exceptions = (_read_exceptions(r, top["exceptions"], zone_names)
                  if "exceptions" in top else [])
    apps = (r.items(top["not_evaluated_apps"], "not_evaluated_apps", r.app)
            if "not_evaluated_apps" in top else [])
    zones = [d.zone for d in drafts]
    if (r.issues or header is None or classes is None or default is None
            or default.zone is None or exceptions is None or apps is None or None in zones):
        return None
    return Policy(
        name=header.name, title=header.title, legal_basis=header.legal_basis,
        as_of=header.as_of, source=source, sha256=sha256, classifications=classes,
        zones=tuple(z for z in zones if z), default_zone=default.zone,
        exceptions=tuple(exceptions), not_evaluated_apps=frozenset(apps),
        utc_offset=header.utc_offset, notice=header.notice, sources=header.sources,
        _zone_map=PrefixMap((net, (z, net)) for z in zones if z for net in z.networks))


def parse_policy(text: str | bytes, source_name: str = "<policy>") -> Policy:
    """Validate a policy document; raises :class:`PolicyError` listing every problem."""
    data = text.encode("utf-8") if isinstance(text, str) else text
    r = _Reader(source_name)
    try:
        decoded = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PolicyError([PolicyIssue(source_name, 0, "", f"not UTF-8 text: {exc}")]) from None
    root = compose(r, decoded, "expected a policy mapping (policy, default_zone, classifications)")
    policy = _build(r, root, source_name, hashlib.sha256(data).hexdigest()) if root else None
    if policy is None:
        raise PolicyError(sorted(r.issues, key=lambda i: i.line))
    return policy


def load_policy(path: str | Path) -> Policy:
    """Read and validate a policy file (see :func:`parse_policy`)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise PolicyError([PolicyIssue(str(path), 0, "", f"cannot read: {exc.strerror}")]) \
            from None
    return parse_policy(data, str(path))


DEFAULT_POLICY_RESOURCE = "data/macau-pdpa.yaml"


@functools.lru_cache(maxsize=1)
def default_policy() -> Policy:
    """The policy used when none is given: the Macau PDPA pack shipped as package data."""
    resource = resources.files("residency_monitor").joinpath(DEFAULT_POLICY_RESOURCE)
    return parse_policy(resource.read_bytes(), f"residency_monitor/{DEFAULT_POLICY_RESOURCE}")


# --------------------------------------------------------------------------------------------
# Evaluation: pure functions of (facts, policy)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FlowFacts:
    """What the stages before the policy know of one flow (the policy's only input)."""

    client_ip: str
    server_ip: str
    server_port: int
    transport: str            # tcp/udp/icmp/icmp6/ip-N
    app: str                  # tls, quic, http, smtp, ftp, pop3, imap, telnet, dns, ntp, ssh, ...
    direction: str            # outbound | inbound | internal | external
    ts: float                 # packet time of the deciding packet; exception expiry is judged here
    tls_version: int | None = None      # negotiated version code, None without a ServerHello
    encrypted: bool = False   # TLS/QUIC/SSH seen (for STARTTLS flows: upgraded)
    payload: bool = True      # any payload was exchanged
    # False for a flow known from flow export (NetFlow/IPFIX): no handshake or payload
    # was ever visible, so the transport rules cannot be judged (rather than all failing)
    transport_visible: bool = True
    # the internal (client) side sent at least one packet: an inbound datagram or a SYN-ACK
    # (backscatter) that the port or SYN rule makes "outbound" moved nothing out
    client_sent: bool = True
    sni: str | None = None
    server_names: tuple[str, ...] = ()  # names the client resolved to this address (DNS)
    country: str | None = None
    country_source: str | None = None
    asn: int | None = None


@dataclass(frozen=True, slots=True)
class Verdict:
    """The judgement of one flow."""

    verdict: str                   # "compliant" | "violation" | "exempt" | "not_evaluated"
    violations: tuple[str, ...]    # remaining violated rules (RULES order)
    waived: tuple[str, ...]        # rules waived by the exception
    zone: str | None
    classification: str | None
    exception: str | None          # id of the exception that applied
    exception_expired: str | None  # id of a matching exception that had expired
    explanation: str


@dataclass(frozen=True, slots=True)
class _Check:
    """One rule's outcome for one flow: "pass", "violation" or "n/a", and why."""

    rule: str
    outcome: str
    detail: str
    conditional: bool = False


def tls_version_code(name: str | None) -> int | None:
    """Version code for a flow record's ``tls_version`` name ("TLS 1.3", "TLS 1.3 draft 23")."""
    if name is None:
        return None
    for code in _TLS_RANK:
        if version_name(code) == name:
            return code
    m = re.fullmatch(r"TLS 1\.3 draft (\d+)|0x([0-9a-fA-F]{4})", name)
    if m and m[1]:
        return (_TLS13_DRAFT_PREFIX << 8) | int(m[1])
    return int(m[2], 16) if m else None


def _tls_rank(code: int) -> int | None:
    if code >> 8 == _TLS13_DRAFT_PREFIX:
        return 0x0304
    return _TLS_RANK.get(code)


def zone_of(ip: str, policy: Policy) -> Zone:
    """The zone of an internal address: longest-prefix match, else the default zone."""
    hit = policy._zone_map.lookup_str(ip)
    return hit[0] if hit is not None else policy.default_zone


def _zone_network(ip: str, policy: Policy) -> str | None:
    hit = policy._zone_map.lookup_str(ip)
    return hit[1] if hit is not None else None


def _not_evaluated(facts: FlowFacts, policy: Policy) -> str | None:
    if facts.direction != EVALUATED_DIRECTION:
        return (f"not evaluated: direction {facts.direction} (only outbound flows, an internal "
                "client sending to the outside, are judged)")
    if not facts.client_sent:
        return ("not evaluated: only the outside sent (the internal side sent nothing, so "
                "nothing left the network)")
    for what, value in (("app", facts.app), ("transport", facts.transport)):
        if value in policy.not_evaluated_apps:
            return (f"not evaluated: {what} {value} is listed in not_evaluated_apps "
                    "(carries no personal data)")
    return None


def _short_list(codes: Iterable[str], limit: int = 8) -> str:
    ordered = sorted(codes)
    if len(ordered) <= limit:
        return ", ".join(ordered) or "none"
    return ", ".join(ordered[:limit]) + f", ... ({len(ordered)} in all)"


def _geo_checks(facts: FlowFacts, cls: Classification) -> list[_Check]:
    """geo_unknown, then residency (not judged when the destination was not located)."""
    if cls.any_country:
        return [_Check("geo_unknown", "n/a", "every country is permitted ('*')"),
                _Check("residency", "pass", "every country is permitted ('*')")]
    if facts.country is None:
        if cls.unlocated == "violation":
            geo = _Check("geo_unknown", "violation",
                         f"destination {facts.server_ip} could not be located "
                         "(unlocated: violation, fail closed)")
        else:
            geo = _Check("geo_unknown", "pass",
                         f"destination {facts.server_ip} not located; unlocated: allow")
        return [geo, _Check("residency", "n/a", "not judged: the destination has no country")]
    where = f" (by {facts.country_source})" if facts.country_source else ""
    geo = _Check("geo_unknown", "pass", f"destination located in {facts.country}{where}")
    return [geo, _residency(facts.country, cls)]


def _residency(country: str, cls: Classification) -> _Check:
    if country in cls.permitted:
        return _Check("residency", "pass", f"destination {country} is permitted")
    condition = cls.condition(country)
    if condition is not None:
        return _Check("residency", "violation",
                      f"destination {country} is conditional: {condition}", conditional=True)
    needs = f"; needs {cls.otherwise}" if cls.otherwise else ""
    return _Check("residency", "violation", f"destination {country} is not permitted "
                                            f"(permitted: {_short_list(cls.permitted)}){needs}")


def _transport_checks(facts: FlowFacts, cls: Classification) -> list[_Check]:
    """plaintext, tls_version, no_handshake: at most one of them decides (see module doc)."""
    na = {rule: _Check(rule, "n/a", "") for rule in ("plaintext", "tls_version", "no_handshake")}
    decided = _transport_decision(facts, cls)
    if decided.rule in na:
        na[decided.rule] = decided
    else:  # a reason why none of the three applies
        na = {rule: _Check(rule, "n/a", decided.detail) for rule in na}
    return list(na.values())


NOT_VISIBLE = "transport security not judged (flow export carries no handshake)"


def _transport_decision(facts: FlowFacts, cls: Classification) -> _Check:
    app = facts.app
    if not facts.transport_visible:
        return _Check("", "n/a", NOT_VISIBLE)
    if not facts.payload:
        return _Check("", "n/a", "no payload was exchanged")
    if app in RESIDENCY_ONLY_APPS:
        return _Check("", "n/a", f"{app} is judged on residency only")
    if app in SELF_ENCRYPTED_APPS:
        return _Check("", "n/a", f"{app} is encrypted by design; no TLS version rule")
    version = facts.tls_version
    if version is None and app in QUIC_APPS:
        version = 0x0304
    if version is not None:
        return _tls_check(version, cls, assumed=facts.tls_version is None)
    if app in PLAINTEXT_APPS and not facts.encrypted:
        outcome = "violation" if cls.plaintext == "forbid" else "pass"
        verb = "is forbidden" if outcome == "violation" else "is allowed"
        return _Check("plaintext", outcome,
                      f"plaintext {app} (not encrypted) {verb} for {cls.name} data")
    if cls.plaintext == "allow":
        return _Check("", "n/a", f"plaintext is allowed for {cls.name} data; no handshake needed")
    return _Check("no_handshake", "violation", _no_handshake_detail(facts))


def _no_handshake_detail(facts: FlowFacts) -> str:
    if facts.app == "tls" or facts.encrypted:
        what = f"{facts.app} flow carried data but no ServerHello was seen"
    else:
        what = f"{facts.app} protocol carried data with no recognised encryption handshake"
    return f"{what}: a flow whose handshake was never seen is not compliant"


def _tls_check(version: int, cls: Classification, assumed: bool) -> _Check:
    rank = _tls_rank(version)
    name = "TLS 1.3 (QUIC)" if assumed else version_name(version)
    minimum = MIN_TLS_NAMES[cls.min_tls]
    if rank is None:
        return _Check("tls_version", "violation",
                      f"unknown TLS version {name} cannot be shown to meet {cls.min_tls}")
    if rank < minimum:
        return _Check("tls_version", "violation", f"{name} is below the minimum {cls.min_tls}")
    return _Check("tls_version", "pass", f"{name} meets the minimum {cls.min_tls}")


def _checks(facts: FlowFacts, cls: Classification) -> list[_Check]:
    return _geo_checks(facts, cls) + _transport_checks(facts, cls)


def _names(facts: FlowFacts) -> list[str]:
    names = [facts.sni, *facts.server_names]
    return [n.lower().rstrip(".") for n in names if n]


def _sni_fits(pattern: str, name: str) -> bool:
    if pattern.startswith("*."):
        return name.endswith(pattern[1:])
    return name == pattern


def _misfit(exc: Exemption, facts: FlowFacts, zone: Zone) -> str | None:
    """None when the exception's zones and match fit the flow, else why not."""
    if exc.zones is not None and zone.name not in exc.zones:
        return f"zone {zone.name} is not in its zones ({', '.join(exc.zones)})"
    if exc.sni and not any(_sni_fits(p, n) for p in exc.sni for n in _names(facts)):
        return f"no name of the flow ({', '.join(_names(facts)) or 'none'}) matches its sni"
    if exc.networks:
        addr = ipaddress.ip_address(facts.server_ip)
        if not any(addr in net for net in exc.networks):
            return f"server {facts.server_ip} is not in its cidr"
    if exc.asn and facts.asn not in exc.asn:
        return f"AS {facts.asn} is not in its asn"
    if exc.country and facts.country not in exc.country:
        return f"country {facts.country} is not in its country"
    return None


def _packet_date(ts: float, policy: Policy) -> date:
    return datetime.fromtimestamp(ts, timezone(policy.utc_offset)).date()


def _find_exception(facts: FlowFacts, policy: Policy,
                    zone: Zone) -> tuple[Exemption | None, Exemption | None]:
    """(first valid matching exception, first expired matching one met before it)."""
    today = _packet_date(facts.ts, policy)
    expired = None
    for exc in policy.exceptions:
        if _misfit(exc, facts, zone) is not None:
            continue
        if exc.expires < today:
            expired = expired or exc
            continue
        return exc, expired
    return None, expired


def evaluate(facts: FlowFacts, policy: Policy) -> Verdict:
    """Judge one flow against the policy (pure; see the module docstring for the rules)."""
    skip = _not_evaluated(facts, policy)
    if skip is not None:
        outbound = facts.direction == EVALUATED_DIRECTION
        zone = zone_of(facts.client_ip, policy) if outbound else None
        return Verdict("not_evaluated", (), (), zone.name if zone else None,
                       zone.classification if zone else None, None, None, skip)
    zone = zone_of(facts.client_ip, policy)
    cls = policy.classifications[zone.classification]
    checks = _checks(facts, cls)
    failed = [c for c in checks if c.outcome == "violation"]
    prefix = f"zone {zone.name} ({cls.name})"
    if not failed:
        return Verdict("compliant", (), (), zone.name, cls.name, None, None,
                       _compliant_text(prefix, checks))
    applied, expired = _find_exception(facts, policy, zone)
    waived = [c for c in failed if applied is not None and c.rule in applied.waives]
    remaining = [c for c in failed if c not in waived]
    text = _violation_text(prefix, remaining, waived, applied, expired)
    return Verdict("violation" if remaining else "exempt",
                   tuple(c.rule for c in remaining), tuple(c.rule for c in waived),
                   zone.name, cls.name, applied.id if applied and waived else None,
                   expired.id if expired else None, text)


def _compliant_text(prefix: str, checks: list[_Check]) -> str:
    by_rule = {c.rule: c for c in checks}
    parts = [by_rule["residency"].detail if by_rule["residency"].outcome != "n/a"
             else by_rule["geo_unknown"].detail]
    decided = [c.detail for c in checks[2:] if c.outcome != "n/a"]
    parts.append(decided[0] if decided else checks[2].detail)
    return f"{prefix}: " + "; ".join(p for p in parts if p)


def _exception_label(exc: Exemption) -> str:
    return f"{exc.id} (owner {exc.owner}, expires {exc.expires.isoformat()})"


def _violation_text(prefix: str, remaining: list[_Check], waived: list[_Check],
                    applied: Exemption | None, expired: Exemption | None) -> str:
    def said(checks: list[_Check]) -> str:
        return "; ".join(c.detail + ("; no approved exception" if c.conditional and c in remaining
                                     else "") for c in checks)
    notes = []
    if expired is not None:
        notes.append(f"exception {expired.id} expired {expired.expires.isoformat()} "
                     "and does not apply")
    if applied is not None and not waived:
        notes.append(f"exception {applied.id} applies but waives only {', '.join(applied.waives)}")
    tail = "".join(f". {n[0].upper()}{n[1:]}" for n in notes)
    rules = ", ".join(c.rule for c in waived)
    if not remaining:
        assert applied is not None
        return f"exempt by {_exception_label(applied)}: {rules} waived. {prefix}: {said(waived)}" \
            + tail
    text = f"{prefix}: {said(remaining)}"
    if waived:
        assert applied is not None
        text += f". Exception {_exception_label(applied)} waived {rules}"
    return text + tail


def explain(facts: FlowFacts, policy: Policy) -> str:
    """A multi-line account of how :func:`evaluate` judges the flow, for ``policy explain``."""
    lines = [
        f"policy {policy.name}: {policy.title} (as of {policy.as_of.isoformat()}, "
        f"sha256 {policy.sha256[:16]}..., {policy.source})",
        f"flow: {facts.client_ip} -> {facts.server_ip}:{facts.server_port} {facts.transport} "
        f"app {facts.app}, {facts.direction}, at {_ts_text(facts.ts, policy)}",
    ]
    verdict = evaluate(facts, policy)
    if verdict.verdict == "not_evaluated" and facts.direction != EVALUATED_DIRECTION:
        return "\n".join([*lines, f"verdict: not_evaluated: {verdict.explanation}"])
    zone = zone_of(facts.client_ip, policy)
    cls = policy.classifications[zone.classification]
    lines += _zone_lines(facts, policy, zone, cls)
    if verdict.verdict != "not_evaluated":
        lines += _destination_lines(facts)
        lines.append("checks:")
        lines += [f"  {c.rule}: {c.outcome}" + (f": {c.detail}" if c.detail else "")
                  for c in _checks(facts, cls)]
        lines += _exception_lines(facts, policy, zone)
    lines.append(f"verdict: {verdict.verdict}: {verdict.explanation}")
    return "\n".join(lines)


def _ts_text(ts: float, policy: Policy) -> str:
    return datetime.fromtimestamp(ts, timezone(policy.utc_offset)).isoformat(timespec="seconds")


def _zone_lines(facts: FlowFacts, policy: Policy, zone: Zone, cls: Classification) -> list[str]:
    net = _zone_network(facts.client_ip, policy)
    why = (f"longest match {net} of {facts.client_ip}" if net
           else f"no zone network contains {facts.client_ip}: the default zone")
    conditional = "; ".join(f"{c}: {t}" for c, t in cls.conditional) or "none"
    return [
        f"zone: {zone.name} ({why}), owner {zone.owner or 'not given'}",
        f"rules ({cls.name}): permitted {_short_list(cls.permitted, 50)}; conditional "
        f"{conditional}; min_tls {cls.min_tls}; plaintext {cls.plaintext}; "
        f"unlocated {cls.unlocated}" + (f"; otherwise: {cls.otherwise}" if cls.otherwise else ""),
    ]


def _destination_lines(facts: FlowFacts) -> list[str]:
    version = version_name(facts.tls_version) if facts.tls_version is not None else "none"
    return [
        f"destination: country {facts.country or 'unknown'}"
        f"{f' (by {facts.country_source})' if facts.country and facts.country_source else ''}, "
        f"AS {facts.asn if facts.asn is not None else 'unknown'}, sni {facts.sni or 'none'}, "
        f"resolved names {', '.join(facts.server_names) or 'none'}",
        f"transport: payload {'yes' if facts.payload else 'no'}, encrypted "
        f"{'yes' if facts.encrypted else 'no'}, TLS version {version}",
    ]


def _exception_lines(facts: FlowFacts, policy: Policy, zone: Zone) -> list[str]:
    if not policy.exceptions:
        return ["exceptions: none in the policy"]
    today = _packet_date(facts.ts, policy)
    lines = [f"exceptions (in file order, judged on {today.isoformat()}):"]
    applied = False
    for exc in policy.exceptions:
        misfit = _misfit(exc, facts, zone)
        if misfit is not None:
            state = f"does not match: {misfit}"
        elif exc.expires < today:
            state = f"matches but expired {exc.expires.isoformat()}: does not apply"
        elif applied:
            state = "matches, but an earlier exception already applies"
        else:
            applied = True
            state = f"matches and applies, waives {', '.join(exc.waives)}"
        lines.append(f"  {exc.id}: {state}")
    return lines
