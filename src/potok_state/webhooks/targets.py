"""Which URLs a webhook may target. Private, loopback and link-local addresses
are refused unless WEBHOOK_ALLOW_PRIVATE_TARGETS is on: checked for literal
addresses when a subscription is saved, and for every resolved address when a
delivery connects (so a hostname cannot be pointed inward later)."""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

from aiohttp import ThreadedResolver
from aiohttp.abc import ResolveResult

from potok_state.kit.errors import InvalidInput


class InvalidWebhookUrl(InvalidInput):
    code = "invalid_webhook_url"


def is_private_address(host: str) -> bool:
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return not address.is_global or address.is_multicast


def check_target_url(url: str, *, allow_private: bool) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise InvalidWebhookUrl("Webhook URLs must use http or https.", details={"url": url})
    host = parts.hostname
    if not host:
        raise InvalidWebhookUrl("The webhook URL has no host.", details={"url": url})
    try:
        _ = parts.port
    except ValueError:
        raise InvalidWebhookUrl(
            "The webhook URL has an invalid port.", details={"url": url}
        ) from None
    if parts.username or parts.password:
        raise InvalidWebhookUrl(
            "Webhook URLs must not carry credentials; use the signing secret.",
            details={"url": url},
        )
    if allow_private:
        return
    if host == "localhost" or host.endswith(".localhost") or is_private_address(host):
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
            raise OSError(f"{host} resolves only to private addresses, which are refused")
        return public
