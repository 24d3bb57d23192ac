"""The guard in front of every URL the service itself calls or fetches (webhooks, videos by URL).

A URL that someone else hands us may not make the service reach its own network (server-side request
forgery): after DNS resolution every address must be public, unless its network is listed as allowed (tests
and private deployments). The caller then connects to the address that was checked (`pinned_request`), so a
name that resolves elsewhere a moment later (DNS rebinding) gains nothing, and checks every redirect hop
again (redirects are never followed blindly).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Sequence
from urllib.parse import urlsplit

MAX_URL_CHARS = 2048

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
# host, port -> the addresses it resolves to (tests stub it: no traffic leaves the machine)
Resolver = Callable[[str, int], list[str]]


class UrlRefused(ValueError):
    """The URL is not one the service will call; the message says why, `code` says which rule."""

    def __init__(self, message: str, code: str = "url_refused") -> None:
        super().__init__(message)
        self.code = code


def parse_networks(text: str) -> list[Network]:
    """Comma-separated CIDRs (e.g. "127.0.0.1/32,10.1.0.0/16")."""
    return [ipaddress.ip_network(part.strip(), strict=False) for part in text.split(",") if part.strip()]


def system_resolver(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({info[4][0] for info in infos})


def refusal_of(address: ipaddress.IPv4Address | ipaddress.IPv6Address, allowed: Sequence[Network]) -> bool:
    """Whether the address is one we never reach: private, loopback, link-local, reserved, multicast..."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    if any(address in network for network in allowed):
        return False
    return not address.is_global or address.is_multicast


def check_public_url(
    url: str,
    field: str,
    allowed_networks: str = "",
    schemes: Sequence[str] = ("http", "https"),
    resolver: Resolver | None = None,
) -> list[str]:
    """The addresses `url` resolves to, or UrlRefused: one of `schemes`, a host name, no credentials, and
    only public addresses (or addresses in `allowed_networks`). `field` names the URL in messages."""
    if len(url) > MAX_URL_CHARS:
        raise UrlRefused(f"{field} is longer than {MAX_URL_CHARS} characters", "url_invalid")
    parts = urlsplit(url)
    if parts.scheme not in schemes or not parts.hostname:
        wanted = " or ".join(f"{s}://" for s in schemes)
        raise UrlRefused(f"{field} must be an {wanted} URL with a host name", "url_scheme_refused")
    if parts.username or parts.password:
        raise UrlRefused(f"{field} must not carry a user name or password", "url_invalid")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise UrlRefused(f"{field} has an invalid port ({exc})", "url_invalid") from exc
    try:
        addresses = (resolver or system_resolver)(parts.hostname, port)
    except (OSError, UnicodeError) as exc:
        raise UrlRefused(
            f"the host of {field} ({parts.hostname}) does not resolve: {exc}", "url_unresolvable"
        ) from exc
    if not addresses:
        raise UrlRefused(f"the host of {field} ({parts.hostname}) does not resolve", "url_unresolvable")
    allowed = parse_networks(allowed_networks)
    for text in addresses:
        address = ipaddress.ip_address(text.split("%")[0])
        if refusal_of(address, allowed):
            raise UrlRefused(
                f"{field} points at {address}, a private, loopback or link-local address; "
                "give a public URL that the internet can reach",
                "url_address_refused",
            )
    return list(addresses)


def pinned_request(url: str, address: str) -> tuple[str, dict[str, str], dict]:
    """(URL, headers, httpx extensions) that reach `url`'s host at the already checked `address`, so a
    name that resolves elsewhere a moment later (DNS rebinding) cannot redirect the call: the connection
    goes to the address, Host names the host, and HTTPS checks the certificate against the host name."""
    parts = urlsplit(url)
    ip = f"[{address}]" if ":" in address else address
    netloc = ip + (f":{parts.port}" if parts.port else "")
    host = parts.hostname + (f":{parts.port}" if parts.port else "")
    extensions = {"sni_hostname": parts.hostname} if parts.scheme == "https" else {}
    return parts._replace(netloc=netloc).geturl(), {"Host": host}, extensions
