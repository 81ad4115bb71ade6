"""Which URLs a webhook may target. Private, loopback and link-local addresses
are refused unless WEBHOOK_ALLOW_PRIVATE_TARGETS is on: checked when a
subscription is saved or patched and again before every attempt, on the host
as the HTTP client will read it, and for every resolved address when a
delivery connects (so a hostname cannot be pointed inward later).

"As the HTTP client will read it" matters: yarl (aiohttp's URL type) applies
IDNA and Unicode normalisation, so `127。0。0。1` and `①②⑦.0.0.1` become the
literal 127.0.0.1, which aiohttp connects to without asking any resolver;
`2130706433`, `0x7f000001`, `0177.0.0.1` and `127.1` are IPv4 addresses to the
system resolver (inet_aton); and an IPv6 address may carry an IPv4 one
(IPv4-mapped ::ffff:0:0/96, IPv4-translated ::ffff:0:0:0/96, NAT64 64:ff9b::/96,
6to4 2002::/16, Teredo 2001::/32), checked as that IPv4 address. IPv4-compatible
addresses (::a.b.c.d, ::/96, deprecated by RFC 4291) and the local-use NAT64
prefix 64:ff9b:1::/48 (RFC 8215) are never global and are refused whole.

A host name is checked when a delivery connects: `PublicOnlyResolver` keeps
only the addresses allowed, and a name left with none fails the attempt with
`RefusedTarget`, whose message (in the delivery log) says so."""

from __future__ import annotations

import ipaddress
import re
import socket

from aiohttp import ThreadedResolver
from aiohttp.abc import ResolveResult
from yarl import URL

from potok_state.kit.errors import InvalidInput

_LEGACY_IPV4 = re.compile(r"^[0-9a-fx.]+$")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_IPV4_TRANSLATED = ipaddress.ip_network("::ffff:0:0:0/96")
# Never global whatever IPv4 address they carry.
_NOT_GLOBAL_V6 = (
    ipaddress.ip_network("::/96"),  # IPv4-compatible (and :: and ::1)
    ipaddress.ip_network("64:ff9b:1::/48"),  # local-use NAT64
)


class InvalidWebhookUrl(InvalidInput):
    code = "invalid_webhook_url"


class RefusedTarget(OSError):
    """A delivery's host name resolves only to addresses that are refused."""


def _address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address a host stands for when it is a literal in any form the
    client or the system resolver accepts; None for a name."""
    host = host.strip("[]").rstrip(".")
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if _LEGACY_IPV4.match(host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64 or address in _IPV4_TRANSLATED:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    return None


def is_private_address(host: str) -> bool:
    address = _address(host)
    if address is None:
        return False
    if isinstance(address, ipaddress.IPv6Address):
        if any(address in network for network in _NOT_GLOBAL_V6):
            return True
        embedded = _embedded_ipv4(address)
        if embedded is not None and (not embedded.is_global or embedded.is_multicast):
            return True
    return not address.is_global or address.is_multicast


def check_target_url(url: str, *, allow_private: bool) -> None:
    try:
        parts = URL(url)
        host = parts.host
        _ = parts.port
    except (ValueError, UnicodeError):
        raise InvalidWebhookUrl(
            "The webhook URL cannot be read (host or port).", details={"url": url}
        ) from None
    if parts.scheme not in ("http", "https"):
        raise InvalidWebhookUrl("Webhook URLs must use http or https.", details={"url": url})
    if not host:
        raise InvalidWebhookUrl("The webhook URL has no host.", details={"url": url})
    if parts.user or parts.password:
        raise InvalidWebhookUrl(
            "Webhook URLs must not carry credentials; use the signing secret.",
            details={"url": url},
        )
    if allow_private:
        return
    name = host.rstrip(".")
    if name == "localhost" or name.endswith(".localhost") or is_private_address(name):
        raise InvalidWebhookUrl(
            "Private, loopback and link-local targets are refused "
            "(WEBHOOK_ALLOW_PRIVATE_TARGETS=false).",
            details={"url": url, "host": host},
        )


class PublicOnlyResolver(ThreadedResolver):
    """Resolves like the default resolver, then drops private addresses."""

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        resolved = await super().resolve(host, port, family)
        public = [entry for entry in resolved if not is_private_address(str(entry["host"]))]
        if not public:
            addresses = ", ".join(sorted({str(entry["host"]) for entry in resolved}))
            raise RefusedTarget(
                f"{host} resolves only to private, loopback or link-local addresses "
                f"({addresses}), which are refused (WEBHOOK_ALLOW_PRIVATE_TARGETS=false)"
            )
        return public
