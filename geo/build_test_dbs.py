#!/usr/bin/env python3
"""Build small MaxMind-format databases for tests, in each schema the monitor reads.

Real databases cannot live in the repository (licences, size) and MaxMind's
test files hold none of the bench capture's addresses, so tests build their
own from a network -> country table with mmdb-writer (pip: mmdb-writer,
netaddr). Every file is IPv6 with the IPv4 space under ::/96, as MaxMind
ships them, so one file answers for both families.

    build_test_dbs.py --kind country|city|dbip|ipinfo|asn|isp --out FILE
        (--network CIDR=VALUE ... | --from-json FILE | --from-bench-truth TRUTH.json)

VALUE, by kind (fields separated by ':'; later ones optional):
    country, city, dbip   CC[:REGISTERED[:CITY]]   ":FR" = registered_country only
    ipinfo                CC[:ASN[:AS_NAME]]        "US:AS15169:Google LLC"
    asn, isp              ASN[:ORGANISATION]       "AS15169:Google LLC" or "15169"

--from-json reads a list of [cidr, VALUE] pairs; --from-bench-truth reads the
"geo" key of a bench truth file, which has exactly that shape
([["142.250.0.0/15", "US"], ...]). More specific networks win wherever
networks overlap, whatever the input order.

Importable: build(kind, entries, out_path) with entries as (cidr, VALUE) pairs.
Country names (names.en) are the codes themselves: these are test files.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mmdb_writer import MMDBWriter
from netaddr import IPSet

# kind -> (database_type written to the metadata, description)
KINDS: dict[str, tuple[str, str]] = {
    "country": ("GeoIP2-Country", "GeoIP2 Country test database (not real data)"),
    "city": ("GeoIP2-City", "GeoIP2 City test database (not real data)"),
    "dbip": ("DBIP-Country-Lite", "DB-IP Country Lite test database (not real data)"),
    "ipinfo": ("ipinfo ipinfo_lite.mmdb", "IPinfo Lite test database (not real data)"),
    "asn": ("GeoLite2-ASN", "GeoLite2 ASN test database (not real data)"),
    "isp": ("GeoIP2-ISP", "GeoIP2 ISP test database (not real data)"),
}


class _Writer(MMDBWriter):
    """MMDBWriter with a fixed build_epoch, so tests can check a database's age."""

    def __init__(self, build_epoch: int | None, **kwargs: Any):
        super().__init__(**kwargs)
        self._fixed_epoch = build_epoch

    def _build_meta(self) -> dict[str, Any]:
        meta = super()._build_meta()
        if self._fixed_epoch is not None:
            meta["build_epoch"] = self._fixed_epoch
        return meta


def _fields(value: str, count: int) -> list[str]:
    parts = value.split(":", count - 1)
    return [p.strip() for p in parts] + [""] * (count - len(parts))


def _country(code: str) -> dict[str, Any]:
    return {"iso_code": code.upper(), "names": {"en": code.upper()}}


def _as_number(text: str) -> int:
    digits = text[2:] if text[:2].upper() == "AS" else text
    if not digits.isdigit():
        raise ValueError(f"{text!r} is not an AS number")
    return int(digits)


def record(kind: str, value: str) -> dict[str, Any]:
    """The record one VALUE becomes in a database of this kind."""
    if kind in ("country", "city", "dbip"):
        cc, registered, city = _fields(value, 3)
        rec: dict[str, Any] = {}
        if cc:
            rec["country"] = _country(cc)
        if registered or cc:
            rec["registered_country"] = _country(registered or cc)
        if kind == "city":
            rec["city"] = {"names": {"en": city or f"Test city {cc or registered}"}}
        return rec
    if kind == "ipinfo":
        cc, asn, name = _fields(value, 3)
        rec = {"country_code": cc.upper(), "country": cc.upper()}
        if asn:
            rec["asn"] = f"AS{_as_number(asn)}"
            rec["as_name"] = name or f"AS{_as_number(asn)} test network"
        return rec
    if kind in ("asn", "isp"):
        asn, org = _fields(value, 2)
        rec = {"autonomous_system_number": _as_number(asn)}
        if org:
            rec["autonomous_system_organization"] = org
        if kind == "isp":
            rec["isp"] = rec["organization"] = org or f"AS{_as_number(asn)}"
        return rec
    raise ValueError(f"unknown kind {kind!r} (one of {', '.join(KINDS)})")


def build(kind: str, entries: Iterable[tuple[str, str] | list[str]], out_path: str | Path,
          build_epoch: int | None = None, database_type: str | None = None) -> int:
    """Write a database of ``kind`` from (cidr, VALUE) entries; returns how many networks."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r} (one of {', '.join(KINDS)})")
    default_type, description = KINDS[kind]
    writer = _Writer(build_epoch, ip_version=6, ipv4_compatible=True,
                     database_type=database_type or default_type,
                     languages=["en"], description=description)
    nets = [(ipaddress.ip_network(cidr, strict=False), value) for cidr, value in entries]
    # Less specific first: mmdb-writer lets a later, narrower insert carve out its part.
    nets.sort(key=lambda nv: (nv[0].prefixlen + (96 if nv[0].version == 4 else 0)))
    for net, value in nets:
        writer.insert_network(IPSet([str(net)]), record(kind, value))
    writer.to_db_file(str(out_path))
    return len(nets)


def _parse_network(arg: str) -> tuple[str, str]:
    cidr, sep, value = arg.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"{arg!r}: expected CIDR=VALUE")
    return cidr.strip(), value.strip()


def _pairs(data: object, where: str) -> list[tuple[str, str]]:
    if not isinstance(data, list) or not all(
            isinstance(p, list) and len(p) == 2 and all(isinstance(x, str) for x in p)
            for p in data):
        raise SystemExit(f"{where}: expected a list of [cidr, value] pairs")
    return [(p[0], p[1]) for p in data]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kind", required=True, choices=sorted(KINDS))
    ap.add_argument("--out", required=True, help="database file to write")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--network", action="append", type=_parse_network, metavar="CIDR=VALUE")
    src.add_argument("--from-json", metavar="FILE", help="list of [cidr, value] pairs")
    src.add_argument("--from-bench-truth", metavar="TRUTH.json",
                     help="a bench truth file; its 'geo' table")
    ap.add_argument("--build-epoch", type=int, help="metadata build_epoch (default: now)")
    ap.add_argument("--database-type", help=f"override the metadata database_type "
                    f"(defaults: {', '.join(f'{k}={v[0]}' for k, v in KINDS.items())})")
    args = ap.parse_args(argv)
    if args.network:
        entries = args.network
    elif args.from_json:
        entries = _pairs(json.loads(Path(args.from_json).read_text()), args.from_json)
    else:
        truth = json.loads(Path(args.from_bench_truth).read_text())
        entries = _pairs(truth.get("geo") if isinstance(truth, dict) else None,
                         f"{args.from_bench_truth} ['geo']")
    try:
        count = build(args.kind, entries, args.out, args.build_epoch, args.database_type)
    except ValueError as e:
        print(f"build_test_dbs: {e}", file=sys.stderr)
        return 2
    db_type = args.database_type or KINDS[args.kind][0]
    print(f"wrote {args.out}: {db_type}, {count} networks", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
