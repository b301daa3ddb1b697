"""Which URLs the server may fetch. From inside a cluster, a URL is a way to reach the
metadata endpoint, the database and every internal service: by default only http(s) to
globally routable addresses is allowed, every address a host resolves to is checked, and
the connection then goes to the address that was checked.

Only a CIDR entry of the allow-list (or an address literal listed and used as the URL's
host), or ALLOW_PRIVATE_URLS, lets a URL reach a non-public address: an allow-listed host
*name* still has to resolve to public addresses, since whoever controls its DNS decides
where it points. The cloud metadata endpoints are refused even with ALLOW_PRIVATE_URLS,
unless an allow-list entry names them. A refusal never says whether the name resolved."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from app.errors import ImageError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Special-purpose ranges (RFC 6890 and successors), listed here because ipaddress's
# is_global differs between Python releases; the IPv6 forms that embed an IPv4 address
# are unwrapped and the IPv4 address checked instead.
_NON_GLOBAL_NETWORKS = tuple(
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.0.0.0/24",
        "192.0.2.0/24",
        "192.88.99.0/24",
        "192.168.0.0/16",
        "198.18.0.0/15",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "224.0.0.0/4",
        "240.0.0.0/4",
        "::/128",
        "::1/128",
        "100::/64",
        "2001::/23",
        "2001:db8::/32",
        "fc00::/7",
        "fe80::/10",
        "fec0::/10",
        "ff00::/8",
    )
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
# Instance metadata services: AWS, GCP, Azure, OpenStack, Oracle (IPv4); AWS (IPv6);
# Alibaba Cloud. They hand out the node's credentials.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200")
)


class PolicyRefusal(ImageError):
    """A URL the policy refuses. The message never says what is at the address."""


def embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address inside an IPv4-mapped, IPv4-compatible, 6to4 or Teredo IPv6 address."""
    if address.version != 6:
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if int(address) >> 32 == 0 and int(address) > 1:  # ::a.b.c.d (deprecated IPv4-compatible)
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def is_metadata_address(address: IPAddress) -> bool:
    inner = embedded_ipv4(address)
    return address in METADATA_ADDRESSES or (inner is not None and inner in METADATA_ADDRESSES)


def is_public_address(address: IPAddress) -> bool:
    """True only for globally routable unicast addresses."""
    inner = embedded_ipv4(address)
    if inner is not None:
        return is_public_address(inner)
    if any(address in network for network in _NON_GLOBAL_NETWORKS if network.version == address.version):
        return False
    return not (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
        or not address.is_global
    )


@dataclass(frozen=True)
class UrlPolicy:
    allow_urls: bool = True
    allow_private: bool = False
    allowed_hosts: frozenset[str] = field(default_factory=frozenset)  # exact names, lower case
    allowed_networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def from_settings(cls, settings) -> UrlPolicy:
        hosts, networks = set(), []
        for entry in filter(None, (e.strip() for e in settings.url_allowlist.split(","))):
            # A CIDR network allows every host that resolves into it; a bare name or address
            # allows URLs spelled with exactly that host.
            if "/" in entry:
                networks.append(ipaddress.ip_network(entry, strict=False))
            else:
                hosts.add(entry.lower().rstrip(".").strip("[]"))
        return cls(
            allow_urls=settings.allow_urls,
            allow_private=settings.allow_private_urls,
            allowed_hosts=frozenset(hosts),
            allowed_networks=tuple(networks),
        )

    @property
    def restricted_to_allowlist(self) -> bool:
        return bool(self.allowed_hosts or self.allowed_networks)

    def check_url(self, url: str) -> tuple[str, str, int]:
        """(scheme, host, port) of a URL the policy lets us resolve; refuses the rest."""
        if not self.allow_urls:
            raise PolicyRefusal(
                "image URLs are disabled on this server (refused by policy); send the image inline"
            )
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            raise PolicyRefusal("malformed URL (refused by policy)") from None
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            raise PolicyRefusal(f"URL scheme {scheme!r} refused by policy; use http or https")
        host = (parts.hostname or "").rstrip(".").lower()
        if not host:
            raise PolicyRefusal("URL has no host (refused by policy)")
        return scheme, host, port or (443 if scheme == "https" else 80)

    def refusal(self, host: str, literal: IPAddress | None = None) -> PolicyRefusal:
        """The one message for every refused host *name*, whatever DNS answered (or not): a
        client must not be able to map internal names by telling the cases apart. An
        address literal is the client's own: its message says what kind of address it is.
        Each says which setting would allow it."""
        if self.restricted_to_allowlist and host not in self.allowed_hosts:
            return PolicyRefusal(
                f"host {host!r} is not on this server's URL allow-list (refused by policy); the "
                "operator can add it, or a network it resolves into, to URL_ALLOWLIST"
            )
        if literal is not None:
            if is_metadata_address(literal):
                return PolicyRefusal(
                    f"host {host!r} is a cloud metadata address (refused by policy); only a URL_ALLOWLIST "
                    "entry naming it allows it"
                )
            return PolicyRefusal(
                f"host {host!r} is {address_kind(literal)} (refused by policy); the operator can allow "
                "such addresses with ALLOW_PRIVATE_URLS=true, or a network of them with URL_ALLOWLIST"
            )
        return PolicyRefusal(
            f"host {host!r} does not resolve to a public address (refused by policy); in-cluster image "
            "stores need the operator to list them in URL_ALLOWLIST (names or CIDR networks) or to set "
            "ALLOW_PRIVATE_URLS=true"
        )

    def check_host(self, host: str) -> None:
        """Before resolving: a name the allow-list can never admit is refused without DNS."""
        if self.restricted_to_allowlist and not self.allowed_networks and host not in self.allowed_hosts:
            raise self.refusal(host)

    def check_address(self, host: str, address: IPAddress, literal: bool = False) -> None:
        """Refuse `address` (one that `host` resolved to, or `host` itself when `literal`)
        unless the policy allows it."""
        # Named explicitly: a CIDR entry, or an address literal listed and used as the host.
        named = any(address in net for net in self.allowed_networks) or (
            host in self.allowed_hosts and _is_literal_of(host, address)
        )
        if named:
            return
        shown = address if literal else None
        if is_metadata_address(address):
            raise self.refusal(host, shown)
        if self.restricted_to_allowlist and host not in self.allowed_hosts:
            raise self.refusal(host, shown)
        if self.allow_private or is_public_address(address):
            return
        raise self.refusal(host, shown)


def address_kind(address: IPAddress) -> str:
    """What kind of non-public address this is, in words."""
    inner = embedded_ipv4(address)
    if inner is not None:
        return address_kind(inner)
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_unspecified:
        return "the unspecified address"
    if address.is_multicast:
        return "a multicast address"
    if address.is_private or any(address in n for n in _NON_GLOBAL_NETWORKS if n.version == address.version):
        return "a private address"
    return "not a public address"


def _is_literal_of(host: str, address: IPAddress) -> bool:
    try:
        return ipaddress.ip_address(host) == address
    except ValueError:
        return False
