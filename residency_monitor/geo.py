"""Geolocation: which country a destination address is in, and who says so.

A residency verdict is only as good as the country behind it, so every
answer names its source and its basis:

- ``override``: the operator's own CIDR -> country table (longest prefix wins),
  for networks they know better than any database (a company cloud region, a
  VPN concentrator);
- ``maxmind`` / ``dbip`` / ``ipinfo``: MaxMind-format databases, in the
  configured order. GeoIP2/GeoLite2 and DB-IP Lite share one schema; we use
  ``country`` (where the server is) and fall back to ``registered_country``
  (where the block is registered), and the basis says which one answered.
  IPinfo Lite is flat (``country_code``, ``asn`` "AS123", ``as_name``);
- ``rir``: the regional internet registries' delegation data embedded in
  ``iptocc``, so a fresh machine works with no download. Registry country is
  where the holder registered the block, not where the server stands (an
  anycast CDN registered in the US serves Macau from Hong Kong), so its basis
  is ``registry``, never ``country``.

Internal and special-purpose addresses are never located (country None)
unless an override names them. AS numbers come from GeoLite2-ASN/GeoIP2-ISP
(or IPinfo) databases and are added to whatever located the address.

The schema is read from each file's metadata (``database_type``), never from
its name. Lookups are cached per packed address and never raise for a bad
database: a record that fails to decode is counted and the next source asked.
Files are re-read when geoipupdate replaces them (checked by inode, mtime and
size at most every ``reload_check_interval`` seconds of the caller's clock);
a replacement that cannot be used leaves the previous database in service.

Each file is read through a private copy (an unlinked file in the temporary
directory), never mapped in place: libmaxminddb maps the file, and a file
overwritten in place (``cp new.mmdb GeoLite2-City.mmdb`` truncates it first)
would make the next lookup touch pages past its new end: SIGBUS, the daemon
dead. geoipupdate renames a new file into place, which was always safe; the
copy makes an in-place edit safe too, at the cost of one copy per (re)load.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import socket
import sys
import tempfile
import time
from array import array
from dataclasses import dataclass
from importlib import metadata as _pkg_metadata
from typing import Any, NamedTuple

import iptocc
import maxminddb
from maxminddb.errors import InvalidDatabaseError

from .networks import DEFAULT_INTERNAL, PrefixMap

__all__ = [
    "CACHE_SIZE", "DEFAULT_ASN_FILES", "DEFAULT_COUNTRY_FILES", "DEFAULT_DIRECTORIES",
    "DatabasePaths", "GeoConfig", "GeoError", "GeoResult", "Geolocator", "SourceStatus",
    "classify", "default_database_paths", "existing_default_databases",
]

CACHE_SIZE = 65536

# geoipupdate's DatabaseDirectory (Debian and upstream), then the older location.
DEFAULT_DIRECTORIES = ("/var/lib/GeoIP", "/usr/share/GeoIP")
# Paid editions before free ones; Country before City (same country data, smaller).
DEFAULT_COUNTRY_FILES = (
    "GeoIP2-Country.mmdb", "GeoIP2-City.mmdb",
    "GeoLite2-Country.mmdb", "GeoLite2-City.mmdb",
    "dbip-country-lite.mmdb", "ipinfo_lite.mmdb",
)
DEFAULT_ASN_FILES = ("GeoLite2-ASN.mmdb",)

# Never located by a database: private, shared, loopback, link-local, unique
# local (networks.DEFAULT_INTERNAL), plus "this network", multicast, reserved.
NOT_LOCATED = DEFAULT_INTERNAL + ("0.0.0.0/8", "224.0.0.0/4", "240.0.0.0/4",
                                  "::/128", "ff00::/8")

# database kind -> the source name results carry
_SOURCE_OF_KIND = {"country": "maxmind", "city": "maxmind", "dbip": "dbip",
                   "ipinfo": "ipinfo", "asn": "asn", "isp": "asn"}
_COUNTRY_KINDS = frozenset({"country", "city", "dbip", "ipinfo"})
_ASN_KINDS = frozenset({"asn", "isp", "ipinfo"})

_V4_MAPPED = b"\x00" * 10 + b"\xff\xff"


class GeoError(Exception):
    """A configured database (or override) cannot be used; the message names it and why."""


@dataclass(frozen=True, slots=True)
class GeoResult:
    """Where one address is, according to ``source``, and on what ``basis``.

    basis: ``country`` (the database's server location), ``registered_country``
    (the database had only the registrant's country), ``override`` (the
    operator said so) or ``registry`` (RIR delegation data: not server location).
    """

    country: str | None
    source: str | None
    basis: str | None
    label: str | None = None
    asn: int | None = None
    as_org: str | None = None

    @property
    def server_location(self) -> bool:
        """True when the country is where the server is, not merely where it is registered."""
        return self.basis in ("country", "override")


UNKNOWN = GeoResult(None, None, None)


@dataclass(frozen=True)
class GeoConfig:
    """What the geolocator uses; paths are opened as given (see default_database_paths)."""

    databases: tuple[str, ...] = ()       # country/city databases, in precedence order
    asn_databases: tuple[str, ...] = ()   # ASN/ISP databases
    overrides: tuple[tuple[str, str, str | None], ...] = ()   # (cidr, country, label)
    embedded: bool = True                 # fall back to the RIR data in iptocc
    reload_check_interval: float = 60.0
    cache_size: int = CACHE_SIZE


@dataclass(frozen=True, slots=True)
class SourceStatus:
    """One source as the operator needs to see it: what is loaded, how old, what went wrong."""

    name: str
    path: str | None
    kind: str
    database_type: str | None
    build_epoch: int | None
    age_seconds: float | None
    error: str | None                 # the last failed (re)load, None once a load succeeds
    lookup_errors: int = 0            # records that failed to decode (corrupt data section)
    last_lookup_error: str | None = None


class DatabasePaths(NamedTuple):
    country: tuple[str, ...]
    asn: tuple[str, ...]


def default_database_paths(directories: tuple[str, ...] = DEFAULT_DIRECTORIES) -> DatabasePaths:
    """Every place we would look when nothing is configured, in precedence order.

    File kind ranks above directory, so a paid GeoIP2 file in the older
    directory still beats a GeoLite2 file in geoipupdate's.
    """
    def paths(files: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(os.path.join(d, f) for f in files for d in directories)
    return DatabasePaths(paths(DEFAULT_COUNTRY_FILES), paths(DEFAULT_ASN_FILES))


def existing_default_databases(
        directories: tuple[str, ...] = DEFAULT_DIRECTORIES) -> DatabasePaths:
    """The default paths that exist, one per file name (the first directory holding it)."""
    def present(files: tuple[str, ...]) -> tuple[str, ...]:
        found = []
        for f in files:
            for d in directories:
                p = os.path.join(d, f)
                if os.path.isfile(p):
                    found.append(p)
                    break
        return tuple(found)
    return DatabasePaths(present(DEFAULT_COUNTRY_FILES), present(DEFAULT_ASN_FILES))


def classify(database_type: str) -> str | None:
    """The schema a database_type promises: country, city, dbip, ipinfo, asn, isp, or None.

    Decided by metadata, not file name: operators rename files, and a City
    file saved as GeoLite2-Country.mmdb still reads correctly.
    """
    t = database_type.lower()
    if t.startswith("ipinfo"):
        return "ipinfo"              # flat schema, country and ASN in one record
    words = set(t.replace("_", "-").replace(" ", "-").replace("(", "-").split("-"))
    if "asn" in words:
        return "asn"                 # GeoLite2-ASN, DBIP-ASN-Lite
    if "isp" in words:
        return "isp"
    if t.startswith(("dbip", "db-ip")):
        return "dbip"
    if "city" in words or "enterprise" in words:
        return "city"
    if "country" in words:
        return "country"
    return None


# ----------------------------------------------------------------- opening files

_META_MARKER = b"\xab\xcd\xefMaxMind.com"
_META_MAX = 128 * 1024           # the spec caps metadata at 128 KiB
_SEPARATOR = 16                  # zero bytes between search tree and data section
_CHUNK_NODES = 1 << 18
_U32 = "I" if array("I").itemsize == 4 else "L"
_HIGH_NIBBLE = bytes(b >> 4 for b in range(256))
_LOW_NIBBLE = bytes(b & 0x0F for b in range(256))

Signature = tuple[int, int, int, int]


def _signature(path: str) -> Signature:
    """(device, inode, mtime, size): geoipupdate renames a new file into place (new inode)."""
    st = os.stat(path)
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)


def _records(chunk: bytes, record_size: int) -> array:
    """Every record of a run of search-tree nodes as 32-bit integers, without a Python loop."""
    if record_size == 32:
        buf: bytes | bytearray = chunk
    elif record_size == 24:
        buf = bytearray(len(chunk) // 3 * 4)
        for i in range(3):
            buf[i + 1::4] = chunk[i::3]
    elif record_size == 28:
        buf = bytearray(len(chunk) // 7 * 8)
        buf[0::8] = chunk[3::7].translate(_HIGH_NIBBLE)
        buf[4::8] = chunk[3::7].translate(_LOW_NIBBLE)
        for i in range(3):
            buf[i + 1::8] = chunk[i::7]
            buf[i + 5::8] = chunk[i + 4::7]
    else:
        raise ValueError(f"unsupported record size {record_size}")
    values = array(_U32)
    values.frombytes(bytes(buf))
    if sys.byteorder == "little":
        values.byteswap()
    return values


def _check_search_tree(path: str, node_count: int, record_size: int) -> str | None:
    """Why the search tree cannot be trusted, or None.

    libmaxminddb opens a damaged tree happily and fails (or loops back to
    the root) only for the addresses that walk through the damage, which
    could be days later in production. Scanning every record once at load,
    for a pointer back to the root or past the data section, turns that into
    a clear error at start. (It catches what the C library calls a corrupt
    search tree; a loop to some other ancestor would need a full walk.)
    """
    node_bytes = record_size // 4
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        tail_at = max(0, size - _META_MAX - len(_META_MARKER))
        f.seek(tail_at)
        meta_at = f.read().rfind(_META_MARKER)
        if meta_at < 0:
            return "no metadata section (truncated?)"
        data_size = tail_at + meta_at - node_count * node_bytes - _SEPARATOR
        if data_size < 0:
            return "the search tree runs past the end of the file (truncated?)"
        limit = node_count + _SEPARATOR + data_size
        f.seek(0)
        for first in range(0, node_count, _CHUNK_NODES):
            n = min(_CHUNK_NODES, node_count - first)
            values = _records(f.read(n * node_bytes), record_size)
            if min(values) == 0:
                return "corrupt search tree: a record points back to the root node (a loop)"
            if max(values) >= limit:
                return "corrupt search tree: a record points past the end of the data section"
    return None


@dataclass(frozen=True)
class _Loaded:
    """One successfully opened file; replaced as a whole on reload."""

    reader: Any
    kind: str
    database_type: str
    build_epoch: int | None
    signature: Signature


def _role_error(kind: str | None, database_type: str, role: str) -> str | None:
    if role == "country" and kind in _COUNTRY_KINDS:
        return None
    if role == "asn" and kind in _ASN_KINDS:
        return None
    if role == "country" and kind in ("asn", "isp"):
        return (f"database_type {database_type!r} holds AS numbers, not countries; "
                "it cannot locate servers (configure it as an ASN database)")
    if role == "asn" and kind is not None:
        return (f"database_type {database_type!r} holds no AS numbers "
                "(an ASN database is GeoLite2-ASN, GeoIP2-ISP or IPinfo Lite)")
    wanted = ("a GeoIP2/GeoLite2 Country or City, DB-IP Lite or IPinfo Lite database"
              if role == "country" else "a GeoLite2-ASN, GeoIP2-ISP or IPinfo Lite database")
    return f"database_type {database_type!r} is not {wanted}"


def _open(path: str, role: str) -> _Loaded:
    """Open and vet one file for a role ("country" or "asn"); GeoError says why not."""
    def fail(why: str) -> GeoError:
        return GeoError(f"geolocation database {path}: {why}")
    try:
        sig = _signature(path)
        copy = _private_copy(path)
    except OSError as e:
        raise fail(f"cannot be opened ({e.strerror or e})") from e
    try:
        try:
            reader = maxminddb.open_database(copy, maxminddb.MODE_AUTO)
        except (OSError, InvalidDatabaseError, ValueError) as e:
            raise fail(f"cannot be opened ({str(e).replace(copy, path)})") from e
        try:
            meta = reader.metadata()
            kind = classify(str(meta.database_type))
            # The tree first: a damaged file is the more important thing to say.
            why = (_check_search_tree(copy, meta.node_count, meta.record_size)
                   or _role_error(kind, str(meta.database_type), role))
        except (OSError, ValueError) as e:
            why = f"cannot be read ({str(e).replace(copy, path)})"
    finally:
        if copy != path:
            os.unlink(copy)      # the reader's mapping keeps the data; nobody else sees it
    if why is not None:
        reader.close()
        raise fail(why)
    assert kind is not None
    return _Loaded(reader, kind, str(meta.database_type), meta.build_epoch, sig)


def _private_copy(path: str) -> str:
    """A copy of ``path`` in the temporary directory (see the module doc: no SIGBUS).

    Falls back to ``path`` itself when no copy can be written there (a full or
    read-only temporary directory): the old behaviour, rather than no database.
    """
    with open(path, "rb") as src:
        try:
            fd, copy = tempfile.mkstemp(prefix="residency-geo-", suffix=".mmdb")
        except OSError:
            return path
        try:
            with os.fdopen(fd, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        except OSError:
            os.unlink(copy)
            return path
    return copy


def _built(loaded: _Loaded) -> str:
    when = ("unknown date" if loaded.build_epoch is None
            else time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(loaded.build_epoch)))
    return f"{loaded.database_type} built {when}"


# ------------------------------------------------------------- reading records

def _iso(section: object) -> str | None:
    """The iso_code of a GeoIP2 country section, upper case, if it is a plausible code."""
    if isinstance(section, dict):
        code = section.get("iso_code")
        if isinstance(code, str) and len(code) == 2:
            return code.upper()
    return None


def _ipinfo_country(rec: dict) -> str | None:
    code = rec.get("country_code")
    if not isinstance(code, str):
        code = rec.get("country")    # the older free "country" files put the code here
    if isinstance(code, str) and len(code) == 2:
        return code.upper()
    return None


def _as_number(value: object) -> int | None:
    """AS number from 15169, "15169" or IPinfo's "AS15169"."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        digits = value[2:] if value[:2].upper() == "AS" else value
        if digits.isdigit():
            return int(digits)
    return None


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _asn_of(rec: dict, kind: str) -> tuple[int | None, str | None]:
    if kind == "ipinfo":
        return _as_number(rec.get("asn")), _text(rec.get("as_name"))
    return (_as_number(rec.get("autonomous_system_number")),
            _text(rec.get("autonomous_system_organization")))


# GeoResult fields as a tuple: built on a cache miss, interned into a GeoResult
Fields = tuple[str | None, str | None, str | None, str | None, int | None, str | None]
_NOTHING: Fields = (None, None, None, None, None, None)


def _locate_record(rec: dict, loaded: _Loaded) -> Fields | None:
    """The country a record gives, or None when it names none."""
    source = _SOURCE_OF_KIND[loaded.kind]
    if loaded.kind == "ipinfo":
        cc = _ipinfo_country(rec)
        if cc is None:
            return None
        asn, org = _asn_of(rec, "ipinfo")
        return (cc, source, "country", None, asn, org)
    cc = _iso(rec.get("country"))
    if cc is not None:
        return (cc, source, "country", None, None, None)
    registered = _iso(rec.get("registered_country"))
    if registered is not None:
        return (registered, source, "registered_country", None, None, None)
    return None


class _MmdbSource:
    """One configured file: its current database, and what went wrong with it."""

    def __init__(self, path: str, role: str):
        self.path = path
        self.role = role
        self.loaded = _open(path, role)
        self.error: str | None = None
        self.failed_signature: Signature | None = None
        self.lookup_errors = 0
        self.last_lookup_error: str | None = None

    @property
    def name(self) -> str:
        label = "asn" if self.role == "asn" else _SOURCE_OF_KIND[self.loaded.kind]
        return f"{label} {self.path}"

    def get(self, ip: str) -> dict | None:
        """The record for an address, or None; a corrupt record is counted, never raised."""
        try:
            rec = self.loaded.reader.get(ip)
        except ValueError:
            return None              # an IPv6 address in an IPv4-only database
        except (InvalidDatabaseError, OSError) as e:
            self.lookup_errors += 1
            self.last_lookup_error = str(e)
            return None
        return rec if isinstance(rec, dict) else None

    def refresh(self, force: bool) -> tuple[str | None, bool]:
        """Re-open if the file changed (or always, if forced): (message, replaced)."""
        try:
            sig: Signature | None = _signature(self.path)
        except OSError:
            sig = None
        if not force and sig == self.loaded.signature:
            if self.error is None:
                return None, False
            self.error = self.failed_signature = None    # the file in use is back
            return f"{self.name}: the loaded file is back in place", False
        if not force and self.error is not None and sig == self.failed_signature:
            return None, False                           # reported already
        try:
            new = _open(self.path, self.role)
        except GeoError as e:
            self.error, self.failed_signature = str(e), sig
            return f"could not reload {e}; still using {_built(self.loaded)}", False
        old, self.loaded = self.loaded, new
        self.error = self.failed_signature = None
        old.reader.close()
        return f"reloaded {self.name}: {_built(new)}", True

    def status(self, now: float) -> SourceStatus:
        ld = self.loaded
        age = None if ld.build_epoch is None else now - ld.build_epoch
        return SourceStatus(self.name, self.path, ld.kind, ld.database_type, ld.build_epoch,
                            age, self.error, self.lookup_errors, self.last_lookup_error)

    def _get_explained(self, ip: str) -> tuple[dict | None, str]:
        """The record, or None and why: "not found" or the decoding error."""
        errors = self.lookup_errors
        rec = self.get(ip)
        if self.lookup_errors != errors:
            return None, f"error: {self.last_lookup_error}"
        return rec, "not found"

    def describe_country(self, ip: str) -> str:
        rec, why = self._get_explained(ip)
        if rec is None:
            return why
        if self.loaded.kind == "ipinfo":
            cc = _ipinfo_country(rec)
            asn, org = _asn_of(rec, "ipinfo")
            extra = f"; AS{asn} {org or ''}".rstrip() if asn is not None else ""
            return f"{cc} (country_code{extra})" if cc else "record has no country_code"
        cc, reg = _iso(rec.get("country")), _iso(rec.get("registered_country"))
        if cc is None:
            return f"{reg} (registered_country; no country)" if reg else "record has no country"
        return f"{cc} (country; registered_country {reg})" if reg and reg != cc \
            else f"{cc} (country)"

    def describe_asn(self, ip: str) -> str:
        rec, why = self._get_explained(ip)
        if rec is None:
            return why
        asn, org = _asn_of(rec, self.loaded.kind)
        isp = _text(rec.get("isp"))
        parts = [f"AS{asn}" if asn is not None else "no AS number"]
        if org:
            parts.append(org)
        if isp and isp != org:
            parts.append(f"(isp {isp})")
        return " ".join(parts)

    def close(self) -> None:
        self.loaded.reader.close()


@dataclass(frozen=True, slots=True)
class _Override:
    network: str
    country: str
    label: str | None


def _overrides(items: tuple[tuple[str, str, str | None], ...]) -> PrefixMap[_Override]:
    table: PrefixMap[_Override] = PrefixMap()
    for cidr, country, label in items:
        try:
            net = str(ipaddress.ip_network(cidr, strict=False))
        except ValueError as e:
            raise GeoError(f"geolocation override {cidr!r}: {e}") from e
        cc = country.upper() if isinstance(country, str) else ""
        if len(cc) != 2 or not (cc.isascii() and cc.isalpha()):
            raise GeoError(f"geolocation override {cidr}: country {country!r} "
                           "is not a two-letter ISO 3166-1 code")
        table.add(net, _Override(net, cc, label or None))
    return table


def _iptocc_version() -> str:
    try:
        return f"iptocc {_pkg_metadata.version('iptocc')}"
    except _pkg_metadata.PackageNotFoundError:
        return "iptocc"


def _first_bytes(networks: tuple[str, ...]) -> dict[int, frozenset[int]]:
    """Per family, the first address bytes any of the networks can start with.

    Most destinations are public, and one set probe on the first byte clears
    them without walking every prefix length of the special-purpose table.
    """
    out: dict[int, set[int]] = {4: set(), 6: set()}
    for n in networks:
        net = ipaddress.ip_network(n)
        first = net.network_address.packed[0]
        span = 1 << max(0, 8 - net.prefixlen)
        out[net.version].update(range(first, first + span))
    return {fam: frozenset(v) for fam, v in out.items()}


def _ntop(addr: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET if len(addr) == 4 else socket.AF_INET6, addr)


def _describe(r: GeoResult) -> str:
    if r.country is None:
        return "unknown"
    text = f"{r.country} via {r.source} ({r.basis})"
    if r.label:
        text += f", {r.label}"
    if r.asn is not None or r.as_org:
        text += f", AS{r.asn} {r.as_org or ''}".rstrip()
    return text


class Geolocator:
    """Locate destination addresses: overrides, then databases in order, then RIR data."""

    def __init__(self, config: GeoConfig):
        self.config = config
        self._overrides = _overrides(config.overrides)
        self._internal: PrefixMap[bool] = PrefixMap((n, True) for n in NOT_LOCATED)
        firsts = _first_bytes(NOT_LOCATED)
        self._internal_first4, self._internal_first6 = firsts[4], firsts[6]
        self._country: list[_MmdbSource] = []
        self._asn: list[_MmdbSource] = []
        try:
            for p in config.databases:
                self._country.append(_MmdbSource(str(p), "country"))
            for p in config.asn_databases:
                self._asn.append(_MmdbSource(str(p), "asn"))
        except GeoError:
            self.close()
            raise
        self._cache: dict[bytes, GeoResult] = {}
        # Few distinct answers exist, so cached entries share interned results
        # (and a miss skips the frozen dataclass's slow __init__).
        self._interned: dict[Fields, GeoResult] = {_NOTHING: UNKNOWN}
        self._cache_size = max(1, config.cache_size)
        self._last_check: float | None = None
        self._rir_name = _iptocc_version()

    # -- lookups (hot path: one dict probe when cached)

    def lookup(self, addr: bytes) -> GeoResult:
        """Where a packed address (4 or 16 bytes, as the flow table holds it) is."""
        hit = self._cache.get(addr)
        if hit is not None:
            return hit
        result = self._resolve(addr)
        if len(self._cache) >= self._cache_size:
            self._cache.clear()      # O(1) amortised; refills from the working set
        self._cache[addr] = result
        return result

    def lookup_str(self, ip: str) -> GeoResult:
        """lookup() for a textual address; ValueError if it is not one."""
        return self.lookup(ipaddress.ip_address(ip).packed)

    def _resolve(self, addr: bytes) -> GeoResult:
        if len(addr) == 16 and addr[:12] == _V4_MAPPED:
            addr = addr[12:]
        elif len(addr) not in (4, 16):
            raise ValueError(f"packed address must be 4 or 16 bytes, not {len(addr)}")
        ip = _ntop(addr)
        ov = self._overrides.lookup(addr) if self._overrides else None
        if ov is not None:
            fields: Fields = (ov.country, "override", "override", ov.label, None, None)
        elif self._is_internal(addr):
            return UNKNOWN
        else:
            fields = self._locate(ip)
        if self._asn:
            fields = self._with_asn(fields, ip)
        return self._intern(fields)

    def _is_internal(self, addr: bytes) -> bool:
        firsts = self._internal_first4 if len(addr) == 4 else self._internal_first6
        return addr[0] in firsts and self._internal.lookup(addr) is not None

    def _intern(self, fields: Fields) -> GeoResult:
        result = self._interned.get(fields)
        if result is None:
            if len(self._interned) >= self._cache_size:
                self._interned = {_NOTHING: UNKNOWN}
            result = self._interned[fields] = GeoResult(*fields)
        return result

    def _locate(self, ip: str) -> Fields:
        for src in self._country:
            rec = src.get(ip)
            if rec is not None:
                found = _locate_record(rec, src.loaded)
                if found is not None:
                    return found
        if self.config.embedded:
            cc = iptocc.country_code(ip)
            if cc:
                return (cc.upper(), "rir", "registry", None, None, None)
        return _NOTHING

    def _with_asn(self, fields: Fields, ip: str) -> Fields:
        for src in self._asn:
            rec = src.get(ip)
            if rec is None:
                continue
            asn, org = _asn_of(rec, src.loaded.kind)
            if asn is not None or org is not None:
                return fields[:4] + (asn, org)
        return fields

    # -- diagnostics

    def explain(self, ip: str) -> list[tuple[str, str]]:
        """What every source says about one address, then the result lookups give."""
        addr = ipaddress.ip_address(ip).packed
        plain = addr[12:] if len(addr) == 16 and addr[:12] == _V4_MAPPED else addr
        text = _ntop(plain)
        ov = self._overrides.lookup(plain)
        lines = [("override", "no match" if ov is None else
                  f"{ov.country} via {ov.network}" + (f" ({ov.label})" if ov.label else ""))]
        if self._is_internal(plain):
            lines.append(("address", "internal or special-purpose: never located by a database"))
        lines += [(src.name, src.describe_country(text)) for src in self._country]
        lines += [(src.name, src.describe_asn(text)) for src in self._asn]
        if self.config.embedded:
            cc = iptocc.country_code(text)
            lines.append(("rir (iptocc)", f"{cc.upper()}, registry" if cc else "not found"))
        else:
            lines.append(("rir (iptocc)", "disabled"))
        lines.append(("result", _describe(self.lookup(addr))))
        return lines

    def status(self, now: float) -> list[SourceStatus]:
        """Every database source (then the embedded RIR data, if enabled) as of time ``now``."""
        out = [src.status(now) for src in self._country + self._asn]
        if self.config.embedded:
            out.append(SourceStatus("rir (iptocc)", None, "rir", self._rir_name,
                                    None, None, None))
        return out

    @property
    def cache_len(self) -> int:
        return len(self._cache)

    # -- reloading

    def maybe_reload(self, now: float) -> list[str]:
        """Re-open files that changed on disk, at most once per check interval of ``now``.

        ``now`` is the caller's clock (packet time in a replay), so lookups and
        tests never depend on the wall clock. A clock that jumps back checks at once.
        """
        last = self._last_check
        if last is not None and 0 <= now - last < self.config.reload_check_interval:
            return []
        self._last_check = now
        return self._refresh(force=False)

    def reload(self) -> list[str]:
        """Re-open every file now (SIGHUP); failures keep the previous database."""
        return self._refresh(force=True)

    def _refresh(self, force: bool) -> list[str]:
        messages = []
        replaced = False
        for src in self._country + self._asn:
            msg, changed = src.refresh(force)
            replaced |= changed
            if msg:
                messages.append(msg)
        if replaced:
            self._cache.clear()
        return messages

    def close(self) -> None:
        for src in self._country + self._asn:
            src.close()

    def __enter__(self) -> Geolocator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
