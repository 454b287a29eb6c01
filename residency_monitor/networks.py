"""Longest-prefix matching over IPv4 and IPv6 networks.

Used once per flow (direction, later zones and geolocation overrides), never
per packet. Lookups go from the longest prefix length present down to the
shortest, one dict probe each, so the cost depends on how many distinct
prefix lengths are configured, not on how many networks.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Generic, TypeVar

V = TypeVar("V")

DEFAULT_INTERNAL = (
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16",  # RFC 1918
    "100.64.0.0/10",                                   # RFC 6598 shared (carrier-grade NAT)
    "169.254.0.0/16", "127.0.0.0/8",                   # link-local, loopback
    "fc00::/7", "fe80::/10", "::1/128",                # unique local, link-local, loopback
)


class PrefixMap(Generic[V]):
    """Map networks to values; :meth:`lookup` returns the value of the longest match."""

    def __init__(self, items: Iterable[tuple[str, V]] = ()):
        # per family (4/6): {prefix length: {network int: value}}
        self._by_len: dict[int, dict[int, dict[int, V]]] = {4: {}, 6: {}}
        self._order: dict[int, list[int]] = {4: [], 6: []}
        for net, value in items:
            self.add(net, value)

    def add(self, network: str, value: V) -> None:
        """Add a network such as ``10.0.0.0/8``; raises ValueError for a bad one."""
        net = ipaddress.ip_network(network, strict=False)
        fam = net.version
        bits = 32 if fam == 4 else 128
        plen = net.prefixlen
        table = self._by_len[fam].setdefault(plen, {})
        table[int(net.network_address) >> (bits - plen)] = value
        self._order[fam] = sorted(self._by_len[fam], reverse=True)

    def lookup(self, addr: bytes) -> V | None:
        """Longest match for a packed address (4 or 16 bytes), or None."""
        fam, bits = (4, 32) if len(addr) == 4 else (6, 128)
        n = int.from_bytes(addr, "big")
        tables = self._by_len[fam]
        for plen in self._order[fam]:
            v = tables[plen].get(n >> (bits - plen))
            if v is not None:
                return v
        return None

    def lookup_str(self, addr: str) -> V | None:
        return self.lookup(ipaddress.ip_address(addr).packed)

    def __bool__(self) -> bool:
        return bool(self._order[4] or self._order[6])


class NetworkSet:
    """A set of networks: is this address inside any of them?"""

    def __init__(self, networks: Iterable[str] = DEFAULT_INTERNAL):
        self.networks = tuple(networks)
        self._map: PrefixMap[bool] = PrefixMap((n, True) for n in self.networks)

    def __contains__(self, addr: bytes) -> bool:
        return self._map.lookup(addr) is not None


def direction(client_internal: bool, server_internal: bool) -> str:
    """Zeek-style locality: outbound = an internal client talking to the outside."""
    if client_internal:
        return "internal" if server_internal else "outbound"
    return "inbound" if server_internal else "external"
