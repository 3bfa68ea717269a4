"""Outbound HTTP for webhooks and Slack (no Django): a URL an operator typed is treated as hostile.

- only ``http`` and ``https``, no credentials in the URL;
- the host is resolved ONCE and the connection goes to that address (the ``Host`` header and TLS
  name stay the host's), so a DNS answer that changes between the check and the connect (DNS
  rebinding) cannot steer the request elsewhere;
- link-local (cloud metadata at 169.254.169.254), multicast, unspecified and reserved addresses are
  always refused; loopback and private networks only when the server allows them
  (``EDGEFLEET_NOTIFY_ALLOW_PRIVATE``, for receivers inside the same network);
- redirects are not followed (a 3xx is a failed attempt), connect and read time out, and at most
  ``MAX_BODY`` bytes of the answer are read.

Hand-written on urllib3 (which requests uses) because requests cannot pin the resolved address;
the SSRF-guard libraries for requests are unmaintained.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import urllib3

MAX_BODY = 4096
USER_AGENT = "EdgeFleet-Notify/1"


class Refused(ValueError):
    """The URL or its address is not one the server sends to."""


@dataclass
class Response:
    status: int | None
    body: bytes
    error: str
    duration_ms: int


def check_url(url: str) -> tuple[str, str, int, str]:
    """``(scheme, host, port, path?query)`` of an acceptable URL, or :class:`Refused` with why."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise Refused(f"not a URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise Refused("only http and https URLs")
    if not parts.hostname:
        raise Refused("the URL has no host")
    if parts.username is not None or parts.password is not None:
        raise Refused("no user or password in the URL; put credentials in the path or use the signature")
    port = port or (443 if parts.scheme == "https" else 80)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return parts.scheme, parts.hostname, port, path


def address_refusal(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, allow_private: bool) -> str | None:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_link_local or ip.is_multicast or ip.is_unspecified or ip.is_reserved:
        return f"{ip} is a link-local, multicast or reserved address"
    if (ip.is_loopback or ip.is_private or not ip.is_global) and not allow_private:
        return f"{ip} is a private or loopback address (set EDGEFLEET_NOTIFY_ALLOW_PRIVATE to allow)"
    return None


def resolve(host: str, port: int, allow_private: bool) -> str:
    """The first acceptable address of ``host``; refuses when any address is refused outright."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise Refused(f"cannot resolve {host}: {exc}") from None
    addresses = list(dict.fromkeys(info[4][0] for info in infos))
    if not addresses:
        raise Refused(f"{host} has no address")
    for addr in addresses:
        why = address_refusal(ipaddress.ip_address(addr.split("%")[0]), allow_private)
        if why:
            raise Refused(why)
    return addresses[0]


def post(url: str, body: bytes, headers: dict[str, str], *, timeout: float, allow_private: bool) -> Response:
    """POST ``body``; never raises for network trouble, the error is in the response."""
    start = time.monotonic()

    def done(status: int | None, data: bytes = b"", error: str = "") -> Response:
        return Response(status, data, error[:500], int((time.monotonic() - start) * 1000))

    try:
        scheme, host, port, path = check_url(url)
        addr = resolve(host, port, allow_private)
    except Refused as exc:
        return done(None, error=f"refused: {exc}")
    default_port = 443 if scheme == "https" else 80
    host_header = host if port == default_port else f"{host}:{port}"
    if ":" in host and not host.startswith("["):
        host_header = f"[{host}]" if port == default_port else f"[{host}]:{port}"
    t = urllib3.Timeout(connect=timeout, read=timeout)
    if scheme == "https":
        pool: urllib3.HTTPConnectionPool = urllib3.HTTPSConnectionPool(
            addr, port, timeout=t, retries=False, maxsize=1, server_hostname=host, assert_hostname=host,
            cert_reqs="CERT_REQUIRED",
        )  # fmt: skip
    else:
        pool = urllib3.HTTPConnectionPool(addr, port, timeout=t, retries=False, maxsize=1)
    all_headers = {"User-Agent": USER_AGENT, "Content-Type": "application/json", **headers, "Host": host_header}
    try:
        resp = pool.urlopen(
            "POST", path, body=body, headers=all_headers, redirect=False, retries=False, preload_content=False,
            assert_same_host=False,
        )  # fmt: skip
        try:
            data = resp.read(MAX_BODY, decode_content=False) or b""
        finally:
            resp.close()  # the rest of a long answer is never read: the connection is dropped
        return done(resp.status, data)
    except urllib3.exceptions.HTTPError as exc:
        return done(None, error=f"{type(exc).__name__}: {exc}")
    except OSError as exc:
        return done(None, error=f"{type(exc).__name__}: {exc}")
    finally:
        pool.close()
