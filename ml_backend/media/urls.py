"""One strict parser for every URL the backend connects to.

Why: ``urllib.parse`` and urllib3 (what ``requests`` connects with) disagree on URLs that are not plain RFC 3986.
``http://internal:81\\@label-studio:8080/x`` is ``label-studio`` to the first and ``internal`` to the second, so
a host check done with one parser and a connection made with the other sends the Label Studio token elsewhere.
:func:`parse_destination` accepts only authorities both read the same way (no userinfo, no backslash, no
control or non-ASCII characters, no percent-encoding, no ambiguous numeric hosts), rebuilds the URL from the
parts it checked, and verifies that urllib3 reads the rebuilt URL as the same destination. Whatever is
requested is that rebuilt URL, so the checked destination is the one connected to.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import urllib.parse

from urllib3.util import parse_url

from ..errors import BadRequest

DEFAULT_PORTS = {"http": 80, "https": 443}
# RFC 3986 characters that may stand in a path or query as they are; everything else is percent-encoded.
_PATH_SAFE = "-._~!$&'()*+,;=:@/%"
_LABEL = re.compile(r"^[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?$")
_NUMERIC_LABEL = re.compile(r"^(0x[0-9a-f]*|[0-9]+)$")


class UnsafeURL(BadRequest):
    """A URL the backend will not connect to: its destination is ambiguous or malformed."""


@dataclasses.dataclass(frozen=True)
class Destination:
    """Where a request really goes, and the canonical URL that goes there."""

    scheme: str
    host: str  # lower case; IPv6 without brackets, compressed
    port: int
    path: str  # percent-encoded, starts with "/"
    query: str  # percent-encoded, without "?"

    @property
    def origin(self) -> tuple[str, str, int]:
        return self.scheme, self.host, self.port

    @property
    def netloc(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == DEFAULT_PORTS[self.scheme] else f"{host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.netloc}{self.path}" + (f"?{self.query}" if self.query else "")

    def with_path(self, path_and_query: str) -> Destination:
        """``/path?query`` under this URL's path (Label Studio may be served under a prefix), checked like any URL."""
        return parse_destination(f"{self.scheme}://{self.netloc}{self.path.rstrip('/')}{path_and_query}")


def _refuse(url: str, why: str) -> UnsafeURL:
    return UnsafeURL(f"refusing the URL {url[:200]!r}: {why}")


def _parse_host(url: str, host: str) -> str:
    if host.startswith("["):
        if not host.endswith("]"):
            raise _refuse(url, "an IPv6 literal must be closed with ']'")
        inner = host[1:-1]
        if "%" in inner:
            raise _refuse(url, "IPv6 zone ids are not accepted")
        try:
            return ipaddress.IPv6Address(inner).compressed
        except ValueError:
            raise _refuse(url, f"[{inner}] is not an IPv6 address") from None
    host = host.lower()
    if not host:
        raise _refuse(url, "it has no host")
    if not host.isascii():
        raise _refuse(url, "the host has non-ASCII characters; write an internationalised name in its xn-- form")
    name = host[:-1] if host.endswith(".") else host  # one trailing dot names the same host
    labels = name.split(".")
    if any(not _LABEL.match(label) for label in labels):
        raise _refuse(url, f"{host!r} is not a valid host name")
    if _NUMERIC_LABEL.match(labels[-1]):
        # Resolvers read "127.1", "0x7f.0.0.1" or "2130706433" as IPv4 addresses: only the dotted quad is accepted.
        try:
            return str(ipaddress.IPv4Address(name))
        except ValueError:
            raise _refuse(url, f"{host!r} is not a dotted-quad IPv4 address") from None
    return name


def parse_destination(url: str) -> Destination:
    """The destination of an ``http(s)://`` URL, or :class:`UnsafeURL` saying what is wrong with it."""
    if not isinstance(url, str):
        raise UnsafeURL(f"a URL must be a string, not {type(url).__name__}")
    if any(ord(ch) < 0x21 and ch != " " or ord(ch) == 0x7F for ch in url):
        raise _refuse(url, "it contains control characters (tabs, newlines, NUL)")
    if "\\" in url:
        raise _refuse(url, "it contains a backslash")
    try:
        url.encode("utf-8")
    except UnicodeEncodeError:
        raise _refuse(url.encode("utf-8", "backslashreplace").decode(), "it is not valid UTF-8 text") from None
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in DEFAULT_PORTS:
        raise _refuse(url, "only http:// and https:// URLs can be fetched")
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    authority, tail = rest[:end], rest[end:]
    if "@" in authority:
        raise _refuse(url, "credentials (user@host) in image URLs are not accepted")
    if "%" in authority:
        raise _refuse(url, "percent-encoded characters in the host are not accepted")
    host, port_text = authority, ""
    if authority.startswith("["):
        close = authority.find("]")
        if close < 0:
            raise _refuse(url, "an IPv6 literal must be closed with ']'")
        host, after = authority[: close + 1], authority[close + 1 :]
        if after and not after.startswith(":"):
            raise _refuse(url, "unexpected text after the IPv6 literal")
        port_text = after[1:]
    elif ":" in authority:
        host, _, port_text = authority.partition(":")
        if ":" in port_text:
            raise _refuse(url, "an IPv6 address must be written in brackets")
    if port_text and (not port_text.isdigit() or not 0 < int(port_text) < 65536):
        raise _refuse(url, f"port {port_text!r} is not a number from 1 to 65535")
    port = int(port_text) if port_text else DEFAULT_PORTS[scheme]
    host = _parse_host(url, host)

    tail = tail.split("#", 1)[0]  # the fragment never leaves the client
    path, _, query = tail.partition("?")
    path = urllib.parse.quote(path or "/", safe=_PATH_SAFE)
    query = urllib.parse.quote(query, safe=_PATH_SAFE + "?")
    destination = Destination(scheme, host, port, path, query)

    # Belt and braces: the library that will connect must read the rebuilt URL as the same destination.
    seen = parse_url(destination.url)
    seen_host = (seen.host or "").strip("[]").lower()
    if seen_host.count(":"):
        seen_host = ipaddress.IPv6Address(seen_host).compressed
    if (seen.scheme, seen_host, seen.port or DEFAULT_PORTS[scheme]) != destination.origin:
        raise _refuse(url, "its destination is ambiguous")
    return destination


def join_redirect(current: Destination, location: str) -> Destination:
    """The destination of a redirect ``Location`` from ``current``, checked before it is resolved."""
    if not isinstance(location, str) or not location.strip():
        raise _refuse(current.url, "the redirect has no Location")
    if "\\" in location or any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in location):
        raise _refuse(location, "the redirect Location contains a backslash or control characters")
    return parse_destination(urllib.parse.urljoin(current.url, location.strip()))
