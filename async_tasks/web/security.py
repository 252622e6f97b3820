"""The HTTP boundary: which hosts, origins, bodies and keys the server accepts, and the
headers it answers with.

`BoundaryMiddleware` runs before sessions are resolved or bodies read, for HTTP and
WebSocket requests, with everything it compares computed once at start-up:

* **Proxy headers.** With TRUST_PROXY_HEADERS the client address and scheme come
  from ``X-Forwarded-For`` / ``X-Forwarded-Proto`` when the peer is one of
  FORWARDED_ALLOW_IPS, whatever server runs the app. Otherwise a request carrying
  forwarding headers belongs to its peer like any other (its IP session, its client's
  budgets: `async_tasks.clients`): the headers change nothing. Plain ``uvicorn``
  believes ``X-Forwarded-For`` from loopback by default and hands the app the claimed
  address (with port 0) instead of the peer: such a request is the client
  `FORWARDED_PEER`, so a local page or process can pick neither another caller's IP
  session nor a fresh client per request.
* **Host** (DNS rebinding). The ``Host`` header must be a loopback name
  (``localhost``, ``*.localhost``), an IP literal (a rebinding page always sends its
  own name), HOST, or one of ALLOWED_HOSTS (``*.example.com`` for subdomains, ``*``
  for any): else 400 ``invalid_host``. Litestar's `AllowedHostsConfig` answers with
  its own body and compares the port too, so it is not used.
* **Origin** (cross-site requests). Under the API path, a state-changing request or
  a WebSocket upgrade whose ``Origin`` is neither the server's own (same host and
  port as ``Host``) nor one of CORS_ALLOW_ORIGINS is refused: 403
  ``forbidden_origin``. Requests without ``Origin`` (curl, scripts) are not browsers
  acting for a page and pass. This is the defence for JSON APIs; Litestar's CSRF
  tokens would break every curl example and header-authenticated client.
* **JSON bodies.** A state-changing API request with a body must say
  ``Content-Type: application/json`` (or ``+json``): else 415
  ``unsupported_media_type`` (forms and ``text/plain`` are what other sites can send
  without asking).
* **API keys.** With API_KEYS, every API request needs one (``Authorization:
  Bearer <key>`` or ``X-API-Key``), else 401 ``unauthorized``; sessions still
  isolate callers. With ADMIN_API_KEYS, the admin API (``<api>/admin/...``) needs
  one of those instead, as ``Authorization: Bearer <key>``; who holds it (a name or
  the key's fingerprint) goes in scope state for the admin routes' logs. With
  METRICS_TOKEN, ``/metrics`` needs ``Authorization: Bearer <token>``.
* **Stream tickets.** ``EventSource`` and browser WebSockets cannot send headers: a
  stream route accepts ``?ticket=`` (from ``POST /session/ticket``, valid
  STREAM_TICKET_TTL seconds) in place of the session token and the API key. A ticket
  opens one stream: its nonce is spent on the task store (so across API processes too)
  and a second use is 401 ``invalid_ticket``. The stream is in the ticket's session
  (`TICKET_STATE_KEY`), whatever address or cookie comes with it.
* **Share links.** ``GET <api>/shared/{token}`` and its ``/events`` need no API key:
  the share token in the path is checked by the route and reads one task only.
* **Secure cookies.** A request over TLS (directly, or behind a trusted proxy that
  says so) gets its cookies marked ``Secure``.
* It records each local address requests arrive on (`ServerAddresses`), so
  executors can refuse to call the server itself.

`security_headers` (a ``before_send`` hook, so 404s and errors get them too) adds
``Content-Security-Policy``, ``X-Frame-Options``, ``X-Content-Type-Options`` and
``Referrer-Policy``; `cors_config` is Litestar's `CORSConfig` for CORS_ALLOW_ORIGINS.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import re
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Final
from urllib.parse import parse_qs

import msgspec
from litestar.config.cors import CORSConfig
from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from async_tasks.clients import FORWARDED_PEER
from async_tasks.errors import StoreUnavailable
from async_tasks.settings import Settings
from async_tasks.web.addresses import ServerAddresses
from async_tasks.web.sessions import SessionResolver, Ticket

logger = logging.getLogger("async_tasks.security")

#: Request headers a browser front-end may send, and response headers it may read.
CORS_ALLOW_HEADERS: Final = (
    "Content-Type",
    "X-Session-Token",
    "X-Request-ID",
    "Idempotency-Key",
    "Authorization",
    "X-API-Key",
    "Last-Event-ID",
)
CORS_EXPOSE_HEADERS: Final = (
    "X-Session-Token",
    "X-Session-Token-Status",
    "X-Request-ID",
    "Idempotent-Replayed",
    "Retry-After",
)

#: The admin API, under the API's path (see `web/api/admin.py`), and the scope-state key
#: naming who called it (set here once the key is checked).
ADMIN_PATH: Final = "/admin"
ADMIN_STATE_KEY: Final = "async_tasks_admin"
#: The scope-state key holding the session a valid stream ticket stands for.
TICKET_STATE_KEY: Final = "async_tasks_ticket_session"
#: A refusal: status, error code, message.
_Refusal = tuple[int, str, str]

#: The session WebSocket is also served at the app's root (see `web/api/streams.py`).
ROOT_SOCKET_PATH: Final = "/ws"
CONTENT_SECURITY_POLICY: Final = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
_HEADERS: Final = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
]
_CSP: Final = (b"content-security-policy", CONTENT_SECURITY_POLICY.encode())

_SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})
# The request headers the middleware reads, by kind (one dict look-up per header).
_HOST, _ORIGIN, _CONTENT_TYPE, _LENGTH, _CHUNKED, _AUTHORIZATION, _API_KEY, _FORWARDED = range(8)
_KINDS: Final = {
    b"host": _HOST,
    b"origin": _ORIGIN,
    b"content-type": _CONTENT_TYPE,
    b"content-length": _LENGTH,
    b"transfer-encoding": _CHUNKED,
    b"authorization": _AUTHORIZATION,
    b"x-api-key": _API_KEY,
    b"x-forwarded-for": _FORWARDED,
    b"forwarded": _FORWARDED,
    b"x-real-ip": _FORWARDED,
    b"x-forwarded-proto": _FORWARDED,
}
_JSON_TYPE: Final = re.compile(rb"^\s*application/([a-z0-9.+-]*\+)?json\s*(;|$)", re.IGNORECASE)
_TICKET_PARAM: Final = b"ticket="
_CACHE_SIZE: Final = 1024


def cors_config(settings: Settings) -> CORSConfig | None:
    """Litestar's CORS for CORS_ALLOW_ORIGINS (None when the list is empty): the listed
    origins get credentials, the session, request-id and idempotency headers."""
    exact, wildcard = _split_origins(settings.cors_origins)
    if not exact and not wildcard:
        return None
    return CORSConfig(
        allow_origins=list(exact),
        allow_origin_regex=wildcard.pattern if wildcard is not None else None,
        allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
        allow_headers=list(CORS_ALLOW_HEADERS),
        expose_headers=list(CORS_EXPOSE_HEADERS),
        allow_credentials=True,
        max_age=600,
    )


def _split_origins(origins: Iterable[str]) -> tuple[frozenset[str], re.Pattern[str] | None]:
    """Exact origins, and one pattern for the ``scheme://host:*`` entries (any port)."""
    exact = frozenset(origin for origin in origins if not origin.endswith(":*"))
    patterns = [re.escape(origin[:-2]) + r":\d{1,5}" for origin in origins if origin.endswith(":*")]
    return exact, re.compile("|".join(patterns)) if patterns else None


def error_body(code: str, message: str, details: Any = None) -> bytes:
    error: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        error["details"] = details
    return msgspec.json.encode({"success": False, "error": error})


class BoundaryMiddleware(ASGIMiddleware):
    """See the module docstring. Built once per app; `handle` does a single pass over the
    request headers and set lookups."""

    scopes = (ScopeType.HTTP, ScopeType.WEBSOCKET)

    def __init__(
        self,
        settings: Settings,
        *,
        api_path: str,
        sessions: SessionResolver,
        addresses: ServerAddresses,
        spend_ticket: Callable[[str], Awaitable[bool]] | None = None,
    ) -> None:
        """`spend_ticket(nonce)`: True the first time a ticket's nonce is spent (the task
        store keeps the spent ones: `ClientBudgets.spend_ticket`); None lets a ticket open any
        number of streams."""
        self.sessions = sessions
        self.spend_ticket = spend_ticket
        self.addresses = addresses
        self.api_prefix = api_path.rstrip("/")
        self.stream_socket = self.api_prefix + "/ws"
        #: The routes a share token opens (`async_tasks.web.api.share`): the token is their credential.
        self.shared_prefix = self.api_prefix + "/shared/"
        self.trust_proxy = settings.trust_proxy_headers
        self.proxies = settings.forwarded_networks
        self.any_host = "*" in settings.allowed_host_names
        names = {name for name in settings.allowed_host_names if not name.startswith("*.")}
        bind = settings.host.strip("[]").lower()
        if bind and bind not in ("0.0.0.0", "::"):
            names.add(bind)
        self.host_names = frozenset(names)
        self.host_suffixes = tuple(name[1:] for name in settings.allowed_host_names if name.startswith("*."))
        self.origins, self.origin_pattern = _split_origins(settings.cors_origins)
        self.api_keys = frozenset(hashlib.sha256(key.encode()).digest() for key in settings.api_key_list)
        self.metrics_token = (
            hashlib.sha256(settings.metrics_token.strip().encode()).digest() if settings.metrics_token else None
        )
        #: Admin keys' digests -> who holds each (a name or fingerprint, for the logs).
        self.admin_keys = {hashlib.sha256(key.encode()).digest(): who for key, who in settings.admin_keys.items()}
        self.admin_prefix = self.api_prefix + ADMIN_PATH
        self._hosts: dict[bytes, bool] = {}
        self._origins: dict[tuple[bytes, bytes | None], bool] = {}
        self._json_types: dict[bytes, bool] = {}
        self._servers: set[Any] = set()
        self._peers: dict[str, bool] = {}
        self._warned_forwarding = False

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        server = scope.get("server")
        if server is not None and (type(server) is not tuple or server not in self._servers):
            self._note_server(server)  # (a list in some servers and test clients)
        host = origin = content_type = authorization = api_key = None
        forwarded = False
        body = False
        for name, value in scope["headers"]:
            kind = _KINDS.get(name)
            if kind is None:
                continue
            if kind == _HOST:
                host = value
            elif kind == _ORIGIN:
                origin = value
            elif kind == _CONTENT_TYPE:
                content_type = value
            elif kind == _LENGTH:
                body = body or value.strip() not in (b"0", b"")
            elif kind == _CHUNKED:
                body = True
            elif kind == _AUTHORIZATION:
                authorization = value
            elif kind == _API_KEY:
                api_key = value
            else:
                forwarded = True
        if forwarded:
            self._apply_forwarding(scope)
        if host is not None and not self.any_host and not self._host_allowed(host):
            shown = host.decode("latin-1")
            await self._refuse(
                scope, receive, send, 400, "invalid_host",
                f"The Host header {shown!r} is not one this server answers to. Add the host name to "
                "ALLOWED_HOSTS (loopback names and IP addresses are always accepted).",
            )  # fmt: skip
            return
        path: str = scope["path"]
        # The API, and the session stream's second door at the root (``/ws``).
        if path.startswith(self.api_prefix) or path == ROOT_SOCKET_PATH:
            refusal = self._check_api(scope, path, host, origin, content_type, authorization, api_key, body)
            if isinstance(refusal, Ticket):
                refusal = await self._spend(refusal)
            if refusal is not None:
                await self._refuse(scope, receive, send, *refusal)
                return
        elif self.metrics_token is not None and path == "/metrics" and not self._bearer_is(authorization):
            await self._refuse(
                scope, receive, send, 401, "unauthorized",
                "GET /metrics needs the METRICS_TOKEN as 'Authorization: Bearer <token>'.",
            )  # fmt: skip
            return
        if scope.get("scheme") in ("https", "wss") and scope["type"] == ScopeType.HTTP:
            send = _secure_cookies(send)
        await next_app(scope, receive, send)

    def _note_server(self, server: Any) -> None:
        server = tuple(server)
        self.addresses.add(str(server[0]), server[1])
        if len(self._servers) < _CACHE_SIZE:
            self._servers.add(server)

    # -- checks ----------------------------------------------------------------------

    def _check_api(
        self,
        scope: Scope,
        path: str,
        host: bytes | None,
        origin: bytes | None,
        content_type: bytes | None,
        authorization: bytes | None,
        api_key: bytes | None,
        body: bool,
    ) -> _Refusal | Ticket | None:
        """A refusal; or a valid stream ticket, to spend before the request goes on; or None."""
        websocket = scope["type"] == ScopeType.WEBSOCKET
        method = "" if websocket else scope["method"]  # type: ignore[typeddict-item]
        state_changing = websocket or method not in _SAFE_METHODS
        if origin is not None and state_changing and not self._origin_allowed(origin, host):
            shown = origin.decode("latin-1")
            return (
                403,
                "forbidden_origin",
                f"Requests from the page at {shown} are refused: it is not this server's own origin and not in "
                "CORS_ALLOW_ORIGINS.",
            )
        if self.admin_keys and (path == self.admin_prefix or path.startswith(self.admin_prefix + "/")):
            # The admin API: an admin key instead of an API key (one Authorization header).
            who = self.admin_keys.get(_bearer(authorization) or b"") if authorization is not None else None
            if who is None:
                return (
                    401,
                    "unauthorized",
                    "The admin API needs one of ADMIN_API_KEYS as 'Authorization: Bearer <key>'.",
                )
            scope.setdefault("state", {})[ADMIN_STATE_KEY] = who
            return self._check_body(method, websocket, content_type, body)
        ticket = None
        if (websocket or path.endswith("/events")) and _TICKET_PARAM in scope.get("query_string", b""):
            ticket = self._ticket(scope)
            if ticket is None:
                return self._invalid_ticket("is invalid or expired (they last STREAM_TICKET_TTL seconds)")
        shared = not state_changing and path.startswith(self.shared_prefix)
        if self.api_keys and ticket is None and not shared and not self._key_allowed(authorization, api_key):
            return (
                401,
                "unauthorized",
                "This server needs an API key: send it as 'Authorization: Bearer <key>' or 'X-API-Key: <key>'.",
            )
        return self._check_body(method, websocket, content_type, body) or ticket

    def _invalid_ticket(self, why: str) -> _Refusal:
        return (
            401,
            "invalid_ticket",
            f"The stream ticket {why}: get a new one with POST {self.api_prefix}/session/ticket.",
        )

    async def _spend(self, ticket: Ticket) -> _Refusal | None:
        """Spend a valid ticket: it opens this stream and no other."""
        if self.spend_ticket is None:
            return None
        try:
            first = await self.spend_ticket(ticket.nonce)
        except StoreUnavailable as exc:
            return (503, exc.code, exc.message)
        return None if first else self._invalid_ticket("was already used (a ticket opens one stream)")

    def _check_body(self, method: str, websocket: bool, content_type: bytes | None, body: bool) -> _Refusal | None:
        if body and not websocket and method not in _SAFE_METHODS:
            if content_type is None or not self._is_json(content_type):
                shown = content_type.decode("latin-1") if content_type else "none"
                return (
                    415,
                    "unsupported_media_type",
                    f"Send the request body as JSON with 'Content-Type: application/json' (got {shown}).",
                )
        return None

    def _host_allowed(self, header: bytes) -> bool:
        known = self._hosts.get(header)
        if known is None:
            known = self._judge_host(header.decode("latin-1"))
            if len(self._hosts) >= _CACHE_SIZE:
                self._hosts.clear()
            self._hosts[header] = known
        return known

    def _judge_host(self, header: str) -> bool:
        host = _host_part(header)
        if host is None:
            return False
        if host == "localhost" or host.endswith(".localhost") or host in self.host_names:
            return True
        if self.host_suffixes and host.endswith(self.host_suffixes):
            return True
        try:
            ipaddress.ip_address(host)
        except ValueError:
            return False
        return True

    def _is_json(self, content_type: bytes) -> bool:
        known = self._json_types.get(content_type)
        if known is None:
            known = _JSON_TYPE.match(content_type) is not None
            if len(self._json_types) >= _CACHE_SIZE:
                self._json_types.clear()
            self._json_types[content_type] = known
        return known

    def _origin_allowed(self, origin: bytes, host: bytes | None) -> bool:
        known = self._origins.get((origin, host))
        if known is None:
            known = self._judge_origin(origin, host)
            if len(self._origins) >= _CACHE_SIZE:
                self._origins.clear()
            self._origins[(origin, host)] = known
        return known

    def _judge_origin(self, origin: bytes, host: bytes | None) -> bool:
        text = origin.decode("latin-1").lower()
        if host is not None and text.partition("://")[2] == host.decode("latin-1").lower():
            return True  # the server's own origin (Host is checked above)
        if text in self.origins:
            return True
        return self.origin_pattern is not None and self.origin_pattern.fullmatch(text) is not None

    def _key_allowed(self, authorization: bytes | None, api_key: bytes | None) -> bool:
        if api_key is not None and hashlib.sha256(api_key.strip()).digest() in self.api_keys:
            return True
        return authorization is not None and _bearer(authorization) in self.api_keys

    def _bearer_is(self, authorization: bytes | None) -> bool:
        return authorization is not None and _bearer(authorization) == self.metrics_token

    def _ticket(self, scope: Scope) -> Ticket | None:
        """Read ``?ticket=``: the session it stands for goes into scope state (the session
        middleware puts the request in it)."""
        values = parse_qs(scope["query_string"].decode("latin-1")).get("ticket")
        ticket = self.sessions.read_ticket(values[-1]) if values else None
        if ticket is not None:
            scope.setdefault("state", {})[TICKET_STATE_KEY] = ticket.session_key
        return ticket

    def _apply_forwarding(self, scope: Scope) -> None:
        client = scope.get("client")
        if not (self.trust_proxy and client is not None and self._peer_trusted(str(client[0]))):
            # Not believed: the request is its peer's. A peer the server already replaced
            # with a claimed address (port 0: uvicorn's proxy headers) is unknown.
            if client is not None and client[1] == 0:
                scope["client"] = (FORWARDED_PEER, 0)
            if not self.trust_proxy and not self._warned_forwarding:
                self._warned_forwarding = True
                logger.warning(
                    "A request carried X-Forwarded-For or Forwarded, but TRUST_PROXY_HEADERS is false: it counts "
                    "as its peer's, not as the address it claims. Behind a proxy you run, set "
                    "TRUST_PROXY_HEADERS=true (and FORWARDED_ALLOW_IPS to the proxy's address)."
                )
            return
        headers = dict(scope["headers"])
        chain = [part.strip() for part in headers.get(b"x-forwarded-for", b"").decode("latin-1").split(",")]
        chain = [part for part in chain if part]
        if chain:
            # The nearest address no trusted proxy added is the client.
            for address in reversed(chain):
                if not self._peer_trusted(address):
                    scope["client"] = (address, 0)
                    break
            else:
                scope["client"] = (chain[0], 0)
        proto = headers.get(b"x-forwarded-proto", b"").decode("latin-1").split(",")[-1].strip().lower()
        if proto in ("http", "https"):
            if scope["type"] == ScopeType.WEBSOCKET:
                proto = "wss" if proto == "https" else "ws"
            scope["scheme"] = proto

    def _peer_trusted(self, address: str) -> bool:
        if self.proxies is None:
            return True
        known = self._peers.get(address)
        if known is None:
            try:
                ip = ipaddress.ip_address(address.strip("[]"))
                known = any(ip in network for network in self.proxies)
            except ValueError:
                known = False
            if len(self._peers) >= _CACHE_SIZE:
                self._peers.clear()
            self._peers[address] = known
        return known

    # -- refusals --------------------------------------------------------------------

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, status: int, code: str, message: str) -> None:
        body = error_body(code, message)
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        if status == 401:
            headers.append((b"www-authenticate", b'Bearer realm="async-tasks"'))
        if scope["type"] == ScopeType.WEBSOCKET:
            await refuse_websocket(scope, receive, send, status, body, headers)
            return
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})


def exposure_warning(host: str, settings: Settings) -> str | None:
    """The line to log when the server listens beyond this machine (HOST=0.0.0.0, a LAN
    address) with no API_KEYS: anyone who reaches it can use the API, and sessions only
    keep callers apart. None on a loopback address or with API keys."""
    if settings.api_key_list:
        return None
    name = host.strip().strip("[]").lower()
    try:
        if ipaddress.ip_address(name).is_loopback:
            return None
    except ValueError:
        if name == "localhost" or name.endswith(".localhost"):
            return None
    return (
        f"Listening on {host} (reachable from other machines) without API_KEYS: anyone who can reach it can "
        "use the API. Set API_KEYS (DEMO_GUIDE.md, 'On a shared network'), or HOST=127.0.0.1 to stay local"
    )


def boundary_errors(path: str, method: str, api_path: str) -> dict[int, str]:
    """The errors `BoundaryMiddleware` may answer to `method` `path` before any handler
    runs, as status -> what it means: what the OpenAPI document declares for each
    operation (`async_tasks.web.api.openapi.BoundaryResponses`)."""
    errors = {400: "`invalid_host`: the Host header is not one this server answers to (ALLOWED_HOSTS)."}
    api = api_path.rstrip("/")
    if path.startswith(api) or path == ROOT_SOCKET_PATH:
        if path == api + ADMIN_PATH or path.startswith(api + ADMIN_PATH + "/"):
            errors[401] = "`unauthorized`: the request carries none of the server's ADMIN_API_KEYS."
        else:
            errors[401] = "`unauthorized`: the server has API_KEYS and the request carries none of them."
        if method not in _SAFE_METHODS:
            errors[403] = "`forbidden_origin`: sent by a page of another origin that is not in CORS_ALLOW_ORIGINS."
            errors[415] = "`unsupported_media_type`: a request body that is not JSON."
    elif path == "/metrics":
        errors[401] = "`unauthorized`: the server has a METRICS_TOKEN and the request does not carry it."
    return errors


async def refuse_websocket(
    scope: Scope, receive: Receive, send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]
) -> None:
    """Refuse a WebSocket handshake with an HTTP answer when the server supports it (the
    ASGI denial extension; uvicorn does), else by closing before accepting (a 403)."""
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    if "websocket.http.response" in (scope.get("extensions") or {}):
        await send({"type": "websocket.http.response.start", "status": status, "headers": headers})
        await send({"type": "websocket.http.response.body", "body": body, "more_body": False})
    else:
        await send({"type": "websocket.close", "code": 1008, "reason": ""})


def _secure_cookies(send: Send) -> Send:
    async def send_secure(message: Message) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = [
                (name, value + b"; Secure")
                if name.lower() == b"set-cookie" and b"secure" not in value.lower()
                else (name, value)
                for name, value in message.get("headers", ())
            ]
        await send(message)

    return send_secure


def _bearer(authorization: bytes) -> bytes | None:
    scheme, _, credentials = authorization.strip().partition(b" ")
    if scheme.lower() != b"bearer" or not credentials.strip():
        return None
    return hashlib.sha256(credentials.strip()).digest()


def _host_part(header: str) -> str | None:
    """The host of a Host header, lower-case, without port or trailing dot."""
    header = header.strip().lower()
    if header.startswith("["):
        host, sep, rest = header[1:].partition("]")
        if not sep or (rest and not (rest.startswith(":") and rest[1:].isdigit())):
            return None
        return host
    host, sep, port = header.rpartition(":")
    if sep and port.isdigit():
        header = host
    elif sep:
        return None
    return header.rstrip(".") or None


async def security_headers(message: Message, scope: Scope) -> None:
    """``before_send`` hook: the security headers on every HTTP response (errors and 404s
    included). The dashboard and the API reference load no inline or remote code, so
    the strict CSP holds for every page."""
    if message["type"] != "http.response.start":
        return
    headers = message.get("headers")
    if not isinstance(headers, list):
        headers = message["headers"] = list(headers or ())
    headers.extend(_HEADERS)
    headers.append(_CSP)
