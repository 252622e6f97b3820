"""Which addresses an outbound demo request may reach (`executors._guarded` enforces it on every connection).

The policy refuses loopback, private, link-local, metadata and other non-public
addresses unless they are on an explicit allow-list (whose entries may name a
port: ``127.0.0.1:8080``). The server's own listening address and port are refused
even when allow-listed: a task must never call the server that runs it (it would
act with the server's network position). It is applied twice:

* before a request, on the URL (scheme, user info, host) and on every address the
  host resolves to, to give a clear refusal early (`OutboundPolicy.check`);
* when a connection is opened (`executors._guarded.GuardedNetworkBackend`): the backend resolves the
  host itself, checks every address and connects to a checked address, so DNS
  rebinding and redirects cannot reach an address the first check did not see; a
  connection to one of the server's ports is dropped if it reached this machine
  (its local and peer addresses are the same), whatever address was used.

``localhost`` (and ``*.localhost``) means loopback whatever DNS says (RFC 6761): it is
never looked up, it stands for 127.0.0.1 and ::1, and on the allow-list it allows
those two addresses. So an allow-list that names loopback by address
(``127.0.0.1:3001``) lets ``http://localhost:3001`` through, and one that names
``localhost`` lets ``http://127.0.0.1`` through.

IPv4 text is read the way ``inet_aton`` reads it (``127.1``, ``0177.0.0.1``,
``0x7f000001`` and ``2130706433`` all mean 127.0.0.1), and IPv6 addresses that embed
an IPv4 address (mapped, compatible, NAT64, 6to4) are judged by that address.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable, Collection, Iterable
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any

import anyio
import httpx

from async_tasks.executor import OwnAddresses

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network

#: The setting named in refusals, so the person at the demo knows what to change.
ALLOW_SETTING = "API_CALL_ALLOW_HOSTS"
ALLOWED_SCHEMES = frozenset({"http", "https"})
DEFAULT_PORTS = {"http": 80, "https": 443}

#: What a loopback host name stands for (RFC 6761), first the address servers listen on by default.
LOOPBACK_ADDRESSES: tuple[IPAddress, ...] = (IPv4Address("127.0.0.1"), IPv6Address("::1"))

#: Host names of cloud metadata services, refused whatever they resolve to.
METADATA_HOSTS = frozenset(
    {
        "metadata",
        "metadata.google.internal",
        "metadata.goog",
        "metadata.internal",
        "instance-data",
        "instance-data.ec2.internal",
        "metadata.azure.internal",
        "metadata.tencentyun.com",
        "metadata.platformequinix.com",
    }
)

_V4_BLOCKED: tuple[tuple[IPv4Network, str], ...] = tuple(
    (IPv4Network(net), why)
    for net, why in (
        ("0.0.0.0/8", "an unspecified ('this network') address"),
        ("10.0.0.0/8", "a private address"),
        ("100.64.0.0/10", "a carrier-grade NAT (shared) address"),
        ("127.0.0.0/8", "a loopback address"),
        ("169.254.169.254/32", "the cloud metadata address"),
        ("169.254.0.0/16", "a link-local address"),
        ("172.16.0.0/12", "a private address"),
        ("192.0.0.0/24", "an IETF protocol address"),
        ("192.0.2.0/24", "a documentation address"),
        ("192.88.99.0/24", "a 6to4 relay address"),
        ("192.168.0.0/16", "a private address"),
        ("198.18.0.0/15", "a benchmarking address"),
        ("198.51.100.0/24", "a documentation address"),
        ("203.0.113.0/24", "a documentation address"),
        ("224.0.0.0/4", "a multicast address"),
        ("255.255.255.255/32", "the broadcast address"),
        ("240.0.0.0/4", "a reserved address"),
    )
)

_V6_BLOCKED: tuple[tuple[IPv6Network, str], ...] = tuple(
    (IPv6Network(net), why)
    for net, why in (
        ("::/128", "the unspecified address"),
        ("::1/128", "a loopback address"),
        ("64:ff9b:1::/48", "a local-use NAT64 address"),
        ("100::/64", "a discard-only address"),
        ("2001::/32", "a Teredo tunnel address"),
        ("2001:db8::/32", "a documentation address"),
        ("2001::/23", "an IETF protocol address"),
        ("fd00:ec2::254/128", "the cloud metadata address"),
        ("fc00::/7", "a private (unique local) address"),
        ("fe80::/10", "a link-local address"),
        ("fec0::/10", "a site-local address"),
        ("ff00::/8", "a multicast address"),
    )
)

_MAPPED = IPv6Network("::ffff:0:0/96")
_TRANSLATED = IPv6Network("::ffff:0:0:0/96")
_COMPATIBLE = IPv6Network("::/96")
_NAT64 = IPv6Network("64:ff9b::/96")
_SIX_TO_FOUR = IPv6Network("2002::/16")
_GLOBAL_UNICAST = IPv6Network("2000::/3")

_HOST_NAME = re.compile(r"^[a-z0-9_-]+(\.[a-z0-9_-]+)*\.?$")
_V4_PART = re.compile(r"^(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)$")


class OutboundError(Exception):
    """A request target the api-call executor will not use; the message is for a person."""


class OutboundRefused(OutboundError):
    """The target is refused by the address policy (scheme, user info or address)."""


class OwnAddressRefused(OutboundRefused):
    """The target is the server that runs the task (even if allow-listed)."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(
            f"Refused: {host}:{port} is this server's own address; a task cannot call the server that runs it "
            f"(even with the host in {ALLOW_SETTING})."
        )


class UnresolvableHost(OutboundError):
    """The host name does not resolve."""


def parse_ipv4(text: str) -> IPv4Address | None:
    """Read `text` as ``inet_aton`` does: 1 to 4 parts, each decimal, octal (``0``) or hex (``0x``).

    Returns None when `text` is not an IPv4 address in any of those forms.
    """
    parts = text.split(".")
    if not 1 <= len(parts) <= 4 or not all(_V4_PART.match(part) for part in parts):
        return None
    values = []
    for part in parts:
        if part[:2] in ("0x", "0X"):
            values.append(int(part[2:], 16))
        elif part.startswith("0"):
            values.append(int(part, 8))
        else:
            values.append(int(part))
    *leading, last = values
    if any(value > 255 for value in leading) or last >= 256 ** (5 - len(values)):
        return None
    number = last
    for index, value in enumerate(leading):
        number |= value << (8 * (3 - index))
    return IPv4Address(number)


def parse_ip_literal(host: str) -> IPAddress | None:
    """The address `host` denotes if it is an IP literal in any accepted form, else None."""
    if ":" in host:
        try:
            return IPv6Address(host)
        except ValueError:
            return None
    return parse_ipv4(host.rstrip("."))


def embedded_ipv4(ip: IPv6Address) -> tuple[str, IPv4Address] | None:
    """The IPv4 address an IPv6 address carries (mapped, translated, compatible, NAT64, 6to4)."""
    low32 = IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip in _MAPPED:
        return "an IPv4-mapped address", low32
    if ip in _TRANSLATED:
        return "an IPv4-translated address", low32
    if ip in _COMPATIBLE and int(ip) > 1:
        return "an IPv4-compatible address", low32
    if ip in _NAT64:
        return "a NAT64 address", low32
    if ip in _SIX_TO_FOUR and ip.sixtofour is not None:
        return "a 6to4 address", ip.sixtofour
    return None


def blocked_reason(ip: IPAddress) -> str | None:
    """Why `ip` is refused (e.g. "a loopback address"), or None for a public address."""
    if isinstance(ip, IPv4Address):
        for network, why in _V4_BLOCKED:
            if ip in network:
                return why
        return None if ip.is_global else "a reserved address"
    if ip.scope_id:
        return "a scoped (zone) address"
    embedded = embedded_ipv4(ip)
    if embedded is not None:
        kind, v4 = embedded
        inner = blocked_reason(v4)
        if inner is not None:
            return f"{kind} for {v4}, {inner}"
        if ip in _COMPATIBLE:
            return f"{kind} (deprecated and not routable)"
        return None
    for network6, why in _V6_BLOCKED:
        if ip in network6:
            return why
    if ip not in _GLOBAL_UNICAST or not ip.is_global:
        return "a reserved address"
    return None


def is_loopback_name(name: str) -> bool:
    """``localhost`` and its subdomains: loopback whatever DNS says (RFC 6761)."""
    name = normalize_host(name)
    return name == "localhost" or name.endswith(".localhost")


def normalize_host(host: str) -> str:
    return host.strip().lower().rstrip(".")


class AllowList:
    """Host names and IP networks allowed even when the policy would refuse them, on
    any port or (``host:port``) on one port."""

    def __init__(
        self,
        names: Iterable[str | tuple[str, int | None]] = (),
        networks: Iterable[IPNetwork | tuple[IPNetwork, int | None]] = (),
    ) -> None:
        pairs = [(name, None) if isinstance(name, str) else name for name in names]
        nets = [(net, None) if not isinstance(net, tuple) else net for net in networks]
        #: Names allowed on any port, and on given ports only.
        self.names = frozenset(normalize_host(name) for name, port in pairs if port is None)
        self.name_ports = frozenset((normalize_host(name), port) for name, port in pairs if port is not None)
        #: Networks allowed on any port, and on given ports only.
        self.networks = tuple(net for net, port in nets if port is None)
        self.network_ports = tuple((net, port) for net, port in nets if port is not None)

    @classmethod
    def parse(cls, text: str) -> AllowList:
        """Parse a comma-separated list of host names, IP addresses and CIDR networks,
        each optionally with a port (``localhost:8080``, ``127.0.0.1:8080``, ``[::1]:8080``).

        Raises ValueError naming the first entry that is none of those.
        """
        names: list[tuple[str, int | None]] = []
        networks: list[tuple[IPNetwork, int | None]] = []
        for raw in text.split(","):
            entry = raw.strip()
            if not entry:
                continue
            target, port = _split_port(entry)
            try:
                networks.append((ipaddress.ip_network(target.strip("[]"), strict=False), port))
                continue
            except ValueError:
                pass
            loose = parse_ipv4(target.rstrip("."))
            if loose is not None:
                networks.append((IPv4Network(loose), port))
            elif _HOST_NAME.match(target.lower()):
                names.append((target, port))
            else:
                raise ValueError(f"{entry!r} is not a host name, IP address or CIDR network (with an optional :port)")
        return cls(names, networks)

    def allows_name(self, host: str, port: int | None = None) -> bool:
        name = normalize_host(host)
        return name in self.names or (name, port) in self.name_ports

    def allows_ip(self, ip: IPAddress, port: int | None = None) -> bool:
        candidates = _candidates(ip)
        if any(candidate in network for candidate in candidates for network in self.networks):
            return True
        if _is_loopback(candidates) and any(is_loopback_name(name) for name in self.names):
            return True
        return port is not None and port in self.ports_of(ip)

    def ports_of(self, ip: IPAddress) -> set[int]:
        """The ports that entries naming a port allow `ip` on (``127.0.0.1:3001``, and
        ``localhost:3001`` for a loopback address)."""
        candidates = _candidates(ip)
        ports = {allowed for network, allowed in self.network_ports if any(c in network for c in candidates)}
        if _is_loopback(candidates):
            ports |= {allowed for name, allowed in self.name_ports if is_loopback_name(name)}
        return ports


def _candidates(ip: IPAddress) -> list[IPAddress]:
    """`ip`, and the IPv4 address an IPv6 address embeds."""
    candidates: list[IPAddress] = [ip]
    if isinstance(ip, IPv6Address) and (embedded := embedded_ipv4(ip)) is not None:
        candidates.append(embedded[1])
    return candidates


def _is_loopback(candidates: list[IPAddress]) -> bool:
    """Whether one of `candidates` is an address ``localhost`` stands for."""
    return any(candidate in LOOPBACK_ADDRESSES for candidate in candidates)


def _split_port(entry: str) -> tuple[str, int | None]:
    """``host:port`` or ``[v6]:port`` into its parts (a bare IPv6 address has no port)."""
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        if not rest:
            return host, None
        if not rest.startswith(":"):
            raise ValueError(f"{entry!r} is not a host name, IP address or CIDR network (with an optional :port)")
        return host, _port(entry, rest[1:])
    if entry.count(":") == 1:
        host, _, port = entry.partition(":")
        return host, _port(entry, port)
    return entry, None


def _port(entry: str, text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ValueError(f"{entry!r} has no valid port (1 to 65535)")
    return int(text)


def is_own(ip: IPAddress, port: int, own: OwnAddresses) -> bool:
    """Whether `ip`:`port` is (or may be) the server itself: one of its ports on loopback,
    on the unspecified address, or on an address it was seen on or bound to."""
    if port not in own.ports:
        return False
    candidates: list[IPAddress] = [ip]
    if isinstance(ip, IPv6Address) and (embedded := embedded_ipv4(ip)) is not None:
        candidates.append(embedded[1])
    for candidate in candidates:
        if candidate.is_loopback or candidate.is_unspecified:
            return True
        if any(parse_ip_literal(host) == candidate for host in own.hosts):
            return True
    return False


class _Nowhere:
    """The addresses of no server (the engine runs without one)."""

    hosts: Collection[str] = ()
    ports: Collection[int] = ()


#: Where the server listens when there is none.
NOWHERE: OwnAddresses = _Nowhere()


def _no_own_addresses() -> OwnAddresses:
    return NOWHERE


async def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address `host` resolves to for a TCP connection, in resolver order."""
    infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses: list[IPAddress] = []
    for *_, sockaddr in infos:
        address = ipaddress.ip_address(str(sockaddr[0]))
        if address not in addresses:
            addresses.append(address)
    return addresses


def parse_url(text: str) -> httpx.URL:
    """Parse an endpoint the way the httpx client will, refusing what it cannot use."""
    try:
        return httpx.URL(text)
    except (httpx.InvalidURL, TypeError, ValueError) as exc:
        raise OutboundRefused(f"Not a valid URL: {exc}.") from None


class OutboundPolicy:
    """Decides whether a URL or host may be requested; see the module docstring."""

    def __init__(
        self,
        allow: AllowList | None = None,
        *,
        resolve_timeout: float = 5.0,
        own: Callable[[], OwnAddresses] = _no_own_addresses,
    ) -> None:
        """`own` gives where the server itself listens (read at each check: the server
        learns its addresses after the policy is built)."""
        self.allow = allow or AllowList()
        self.resolve_timeout = resolve_timeout
        self.own = own

    def check_url(self, url: httpx.URL) -> None:
        """Checks that need no network: scheme, user info, host and port."""
        if url.scheme not in ALLOWED_SCHEMES:
            shown = f"{url.scheme}://" if url.scheme else "a URL without a scheme"
            raise OutboundRefused(f"Refused: only http:// and https:// URLs can be called, not {shown}.")
        if url.userinfo:
            raise OutboundRefused(
                "Refused: URLs with a user name or password (user@host) are not allowed; "
                "send credentials in a header instead."
            )
        if not url.raw_host:
            raise OutboundRefused("The endpoint needs a host name, e.g. https://api.example.com/items.")
        if url.port is not None and not 1 <= url.port <= 65535:
            raise OutboundRefused(f"Refused: port {url.port} is out of range.")

    def port_of(self, url: httpx.URL) -> int:
        return url.port or DEFAULT_PORTS[url.scheme]

    async def check(self, url: httpx.URL) -> list[IPAddress]:
        """Check `url` fully, resolving its host; returns the addresses it may use."""
        self.check_url(url)
        return await self.addresses(url.raw_host.decode("ascii"), self.port_of(url))

    async def addresses(self, host: str, port: int) -> list[IPAddress]:
        """The addresses a connection to `host` may use.

        Raises `OutboundRefused` if the host or any address it resolves to is refused
        (a name resolving to one public and one private address is refused), and
        `UnresolvableHost` if it does not resolve.
        """
        name = normalize_host(host)
        allowed_name = self.allow.allows_name(name, port)
        if "%" in host:
            raise OutboundRefused(f"Refused: {host} has a zone or percent-encoded part; use a plain host.")
        literal = parse_ip_literal(name)
        if literal is not None:
            self._check_own(literal, port, host)
            if not allowed_name:
                subject = f"{host} is" if name == str(literal) else f"{host} means {literal},"
                self._check_ip(literal, subject, host, port)
            return [literal]
        if not _HOST_NAME.match(name):
            raise OutboundRefused(f"Refused: {host!r} is not a valid host name.")
        if is_loopback_name(name):
            return self._loopback(host, port)
        if not allowed_name and name in METADATA_HOSTS:
            raise OutboundRefused(f"Refused: {host} is a cloud metadata host name. {self._advice(host, port, ())}")
        try:
            with anyio.fail_after(self.resolve_timeout):
                found = await resolve(host, port)
        except TimeoutError:
            raise UnresolvableHost(f"Cannot resolve host {host}: the DNS lookup timed out.") from None
        except (OSError, UnicodeError) as exc:
            detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise UnresolvableHost(f"Cannot resolve host {host}: {detail}.") from None
        if not found:
            raise UnresolvableHost(f"Cannot resolve host {host}: no addresses.")
        for ip in found:
            self._check_own(ip, port, host)
        if not allowed_name:
            for ip in found:
                self._check_ip(ip, f"{host} resolves to {ip},", host, port)
        return found

    def _loopback(self, host: str, port: int) -> list[IPAddress]:
        """The addresses of a loopback name that the allow-list allows on `port`; the
        name is never looked up (RFC 6761: it is loopback whatever DNS says)."""
        allowed = [ip for ip in LOOPBACK_ADDRESSES if self.allow.allows_ip(ip, port)]
        if not allowed:
            advice = self._advice(host, port, LOOPBACK_ADDRESSES)
            raise OutboundRefused(f"Refused: {host} is a loopback host name. {advice}")
        for ip in allowed:
            self._check_own(ip, port, host)
        return allowed

    def _check_ip(self, ip: IPAddress, subject: str, host: str, port: int) -> None:
        reason = blocked_reason(ip)
        if reason is not None and not self.allow.allows_ip(ip, port):
            raise OutboundRefused(f"Refused: {subject} {reason}. {self._advice(host, port, (ip,))}")

    def _advice(self, host: str, port: int, ips: Iterable[IPAddress]) -> str:
        """What to change: the setting, and when it allows the host on other ports only, which."""
        ports = sorted({allowed for ip in ips for allowed in self.allow.ports_of(ip)})
        if not ports:
            return f"Add the host to {ALLOW_SETTING} to allow it."
        shown = f"[{host}]" if ":" in host else host
        listed = " and ".join(str(allowed) for allowed in ports)
        return f"{ALLOW_SETTING} allows it on port {listed} only; add {shown}:{port} to allow this port."

    def _check_own(self, ip: IPAddress, port: int, host: str) -> None:
        if is_own(ip, port, self.own()):
            raise OwnAddressRefused(host, port)

    def check_connection(self, stream: Any, port: int, host: str) -> None:
        """After connecting to one of the server's ports: refuse if the connection
        reached this very machine (same local and peer address), whatever the address
        (e.g. a LAN address of a server bound to all interfaces)."""
        if port not in self.own().ports:
            return
        sock = stream.get_extra_info("socket")
        if sock is None:
            return
        try:
            local, peer = sock.getsockname()[0], sock.getpeername()[0]
        except OSError:
            return
        if ipaddress.ip_address(local.split("%")[0]) == ipaddress.ip_address(peer.split("%")[0]):
            raise OwnAddressRefused(host, port)
