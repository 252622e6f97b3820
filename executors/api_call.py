"""`api-call`: a real HTTP request to an external API, with its progress shown step by step.

Safe to run on a laptop at a conference: only ``http``/``https`` URLs without user
info, and never a loopback, private, link-local or metadata address — checked on the
addresses the host resolves to, again when each connection is opened, and for every
redirect hop (see `executors._outbound`). Hosts on ``API_CALL_ALLOW_HOSTS`` are
exempt (e.g. ``localhost:8080`` for a demo API on the same machine), except the
server's own address and port: a task never calls the server that runs it. Headers
that carry identity or routing (cookies, session tokens, API keys, forwarding
headers) cannot be set: a task cannot borrow another caller's identity. The whole
call is bounded in time (``timeoutMs``, at most ``API_CALL_MAX_TIMEOUT_MS``) and the
response in size (``API_CALL_MAX_RESPONSE_BYTES``).

A 4xx/5xx answer fails the task with a message such as
``GET https://x/y returned 503 Service Unavailable``.
"""

from __future__ import annotations

import re
from functools import cache
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

import anyio
import httpx
import msgspec

from async_tasks import Step, TaskExecutor, TaskParams
from async_tasks.errors import InvalidParams, SettingsError
from executors._guarded import GuardedTransport
from executors._outbound import (
    ALLOW_SETTING,
    NOWHERE,
    AllowList,
    OutboundError,
    OutboundPolicy,
    parse_url,
)

if TYPE_CHECKING:
    import ssl

    from async_tasks import Progress, Task
    from async_tasks.executor import OwnAddresses

MAX_ENDPOINT_LENGTH = 2048
MIN_TIMEOUT_MS = 100
MAX_TIMEOUT_MS = 30_000
MAX_HEADERS = 50
MAX_HEADER_NAME = 128
MAX_HEADER_VALUE = 4096
#: Characters of a non-JSON body kept in the result.
MAX_TEXT_CHARS = 2000
#: Headers the client sets from the request itself; a caller may not override them.
RESERVED_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection", "upgrade", "te"})
#: Headers that carry identity or routing: a task may not send them (it could pose as
#: another caller, or make a proxy believe it comes from elsewhere).
IDENTITY_HEADERS = frozenset(
    {
        "cookie",
        "authorization",
        "proxy-authorization",
        "x-api-key",
        "x-session-token",
        "forwarded",
        "x-real-ip",
        "x-client-ip",
        "true-client-ip",
        "cf-connecting-ip",
    }
)
IDENTITY_PREFIXES = ("x-forwarded-",)

HeaderName = Annotated[
    str,
    msgspec.Meta(min_length=1, max_length=MAX_HEADER_NAME, pattern=r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$"),
]
HeaderValue = Annotated[str, msgspec.Meta(max_length=MAX_HEADER_VALUE, pattern=r"^[\t\x20-\x7e]*$")]


class ApiCallParams(TaskParams):
    """Parameters of the `api-call` executor."""

    endpoint: Annotated[
        str,
        msgspec.Meta(
            min_length=1,
            max_length=MAX_ENDPOINT_LENGTH,
            description="The http:// or https:// URL to call. Private and loopback hosts are refused.",
            examples=["https://httpbin.org/json"],
        ),
    ]
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"] = "GET"
    data: Annotated[Any, msgspec.Meta(description="JSON request body (sent when not null).")] = None
    headers: (
        Annotated[
            dict[HeaderName, HeaderValue],
            msgspec.Meta(max_length=MAX_HEADERS, description=f"Extra request headers (at most {MAX_HEADERS})."),
        ]
        | None
    ) = None
    timeout_ms: Annotated[
        int,
        msgspec.Meta(
            ge=MIN_TIMEOUT_MS,
            le=MAX_TIMEOUT_MS,
            description=(
                "Time limit for the whole call, redirects and body included "
                f"({MIN_TIMEOUT_MS} to {MAX_TIMEOUT_MS} ms; the server may lower it)."
            ),
        ),
    ] = 10_000


class ApiCallConfig(msgspec.Struct, rename="upper", kw_only=True, frozen=True):
    """Environment settings of the `api-call` executor."""

    #: Comma-separated host names, IP addresses or CIDR networks allowed even when
    #: loopback/private (e.g. ``localhost,127.0.0.1,10.1.0.0/16``).
    api_call_allow_hosts: str = ""
    api_call_max_response_bytes: Annotated[int, msgspec.Meta(ge=1, le=64 * 1024 * 1024)] = 1024 * 1024
    api_call_max_timeout_ms: Annotated[int, msgspec.Meta(ge=MIN_TIMEOUT_MS, le=300_000)] = MAX_TIMEOUT_MS
    api_call_max_redirects: Annotated[int, msgspec.Meta(ge=0, le=20)] = 5


class ApiCallFailed(Exception):
    """The call was made but did not succeed (HTTP error status, timeout, size cap, network)."""


_JSON_TYPE = re.compile(r"^application/([\w.+-]+\+)?json\b|^text/json\b", re.IGNORECASE)
_TEXT_TYPE = re.compile(r"^text/|xml|javascript|x-www-form-urlencoded|^$", re.IGNORECASE)


@cache
def _ssl_context() -> ssl.SSLContext:
    """One verifying context per process: loading the CA bundle takes a while. Never from SSL_CERT_FILE."""
    return httpx.create_ssl_context(trust_env=False)


def _size(n: int) -> str:
    """A byte count for a person: ``1 MiB``, ``4 KiB`` or ``1,234-byte``."""
    if n >= 1024 * 1024 and n % (1024 * 1024) == 0:
        return f"{n // (1024 * 1024)} MiB"
    if n >= 1024 and n % 1024 == 0:
        return f"{n // 1024} KiB"
    return f"{n:,}-byte"


class ApiCallExecutor(TaskExecutor[ApiCallParams, ApiCallConfig]):
    """Calls an external HTTP API and returns its status, headers and (parsed) body."""

    name = "api-call"
    title = "External API Call"
    description = (
        "Makes a real HTTP request to `endpoint` and returns the status code, content type and "
        "body (parsed when JSON). Loopback, private, link-local and cloud-metadata addresses are "
        "refused unless on API_CALL_ALLOW_HOSTS; time and response size are bounded."
    )
    steps: ClassVar[tuple[Step, ...]] = (
        Step("Preparing Request", "Checking the URL and building the request", at=0),
        Step("Resolving Host", "Looking up the host and checking its addresses", at=10),
        Step("Sending Request", "Connecting and sending the request", at=30),
        Step("Receiving Response", "Reading the response body", at=60),
        Step("Parsing Response", "Decoding the response body", at=90),
    )

    def __init__(self, config: ApiCallConfig | None = None) -> None:
        super().__init__(config)
        try:
            allow = AllowList.parse(self.config.api_call_allow_hosts)
        except ValueError as exc:
            raise SettingsError(f"Invalid value for {ALLOW_SETTING}: {exc}") from None
        #: Where the server running the engine listens (none until a web door says: `avoid`).
        self.own: OwnAddresses | None = None
        self.policy = OutboundPolicy(allow, own=self._own_addresses)

    def avoid(self, own: OwnAddresses) -> None:
        """Refuse requests to the server that runs this executor (`async_tasks.executor.CallsOut`)."""
        self.own = own

    def _own_addresses(self) -> OwnAddresses:
        return self.own if self.own is not None else NOWHERE

    async def validate(self, params: ApiCallParams) -> None:
        """Refuse a URL the policy refuses (resolving its host), reserved headers and
        headers carrying identity or routing."""
        self.check_headers(params)
        try:
            await self.policy.check(parse_url(params.endpoint))
        except OutboundError as exc:
            raise InvalidParams(str(exc), field="endpoint") from None

    @staticmethod
    def check_headers(params: ApiCallParams) -> None:
        for header in params.headers or {}:
            lowered = header.lower()
            if lowered in RESERVED_HEADERS:
                raise InvalidParams(
                    f"The {header!r} header is set by the client and cannot be overridden.", field="headers"
                )
            if lowered in IDENTITY_HEADERS or lowered.startswith(IDENTITY_PREFIXES):
                raise InvalidParams(
                    f"The {header!r} header carries identity or routing; a task cannot send it.", field="headers"
                )

    def _time_limit_ms(self, params: ApiCallParams) -> int:
        return min(params.timeout_ms, self.config.api_call_max_timeout_ms)

    async def execute(self, task: Task[ApiCallParams], progress: Progress) -> dict[str, Any]:
        params = task.params
        limit_ms = self._time_limit_ms(params)
        await progress(0, step="Preparing Request", description=f"{params.method} {params.endpoint}")
        try:
            with anyio.fail_after(limit_ms / 1000):
                return await self._call(params, progress)
        except TimeoutError:
            raise ApiCallFailed(
                f"{params.method} {params.endpoint} timed out after {limit_ms} ms (timeoutMs)."
            ) from None

    async def _call(self, params: ApiCallParams, progress: Progress) -> dict[str, Any]:
        started = anyio.current_time()
        method = params.method
        url = parse_url(params.endpoint)
        self.check_headers(params)  # again: execute may run without validate
        headers = {"accept-encoding": "identity", **(params.headers or {})}
        transport = GuardedTransport(self.policy, ssl_context=_ssl_context())
        async with httpx.AsyncClient(
            transport=transport,
            trust_env=False,
            follow_redirects=False,
            timeout=self._time_limit_ms(params) / 1000,
            headers=headers,
        ) as client:
            request = client.build_request(method, url, json=params.data)
            redirects = 0
            while True:
                host = request.url.host
                await progress(10, step="Resolving Host", description=f"Looking up {host}")
                addresses = await self.policy.check(request.url)
                shown = ", ".join(str(a) for a in addresses[:3]) + (" …" if len(addresses) > 3 else "")
                await progress(20, step="Resolving Host", description=f"{host} → {shown}")
                await progress.log(f"{host} resolved to {shown}")
                await progress(30, step="Sending Request", description=f"{request.method} {request.url}")
                await progress.log(f"Sending {request.method} {request.url}")
                try:
                    response = await client.send(request, stream=True)
                except httpx.TimeoutException as exc:
                    raise TimeoutError from exc
                except httpx.HTTPError as exc:
                    raise ApiCallFailed(
                        f"{request.method} {request.url} failed: {exc or type(exc).__name__}."
                    ) from None
                if response.next_request is None:
                    break
                await response.aclose()
                if redirects >= self.config.api_call_max_redirects:
                    raise ApiCallFailed(
                        f"{method} {params.endpoint} stopped after {redirects} redirects (API_CALL_MAX_REDIRECTS)."
                    )
                redirects += 1
                request = response.next_request
                await progress.log(f"{response.status_code} {response.reason_phrase}: redirected to {request.url}")
                await progress(30, step="Sending Request", description=f"Redirected to {request.url}")

            try:
                return await self._read(response, progress, started, redirects)
            finally:
                await response.aclose()

    async def _read(
        self, response: httpx.Response, progress: Progress, started: float, redirects: int
    ) -> dict[str, Any]:
        request = response.request
        status = f"{response.status_code} {response.reason_phrase}".strip()
        waited = round((anyio.current_time() - started) * 1000)
        kind = response.headers.get("content-type", "no content type").split(";")[0]
        await progress.log(
            f"{status} after {waited} ms ({kind})",
            data={"statusCode": response.status_code, "contentType": kind, "elapsedMs": waited},
        )
        if response.is_error:
            raise ApiCallFailed(f"{request.method} {request.url} returned {status}.")
        await progress(60, step="Receiving Response", description=status)

        cap = self.config.api_call_max_response_bytes
        declared = response.headers.get("content-length", "")
        expected = int(declared) if declared.isdigit() else None
        if expected is not None and expected > cap:
            raise ApiCallFailed(
                f"{request.method} {request.url} announced a {_size(expected)} response, over the "
                f"{_size(cap)} limit (API_CALL_MAX_RESPONSE_BYTES); not reading it."
            )
        chunks: list[bytes] = []
        received = 0
        reported = 60
        try:
            async for chunk in response.aiter_bytes():
                received += len(chunk)
                if received > cap:
                    raise ApiCallFailed(
                        f"{request.method} {request.url}: the response is larger than the {_size(cap)} limit "
                        f"(API_CALL_MAX_RESPONSE_BYTES); stopped reading after {received} bytes."
                    )
                chunks.append(chunk)
                if expected and (percent := 60 + int(30 * min(received / expected, 1))) > reported:
                    reported = percent  # at most one report per percent, however small the chunks
                    await progress(percent, step="Receiving Response", description=f"{received} bytes")
        except httpx.TimeoutException as exc:
            raise TimeoutError from exc
        except httpx.HTTPError as exc:
            raise ApiCallFailed(f"{request.method} {request.url}: reading the response failed: {exc}.") from None

        await progress(90, step="Parsing Response", description=f"{received} bytes")
        await progress.log(f"Received {received:,} bytes")
        body, truncated = self._decode(response, b"".join(chunks))
        result = {
            "url": str(response.url),
            "method": request.method,
            "statusCode": response.status_code,
            "reason": response.reason_phrase,
            "headers": {
                key: response.headers[key] for key in ("content-type", "content-length") if key in response.headers
            },
            "bytes": received,
            "redirects": redirects,
            "elapsedMs": round((anyio.current_time() - started) * 1000),
            "body": body,
            "bodyTruncated": truncated,
        }
        await progress(100, step="Parsing Response", description="Done")
        return result

    @staticmethod
    def _decode(response: httpx.Response, content: bytes) -> tuple[Any, bool]:
        """The body for the result: parsed JSON, text cut to MAX_TEXT_CHARS, or a summary."""
        if not content:
            return None, False
        content_type = response.headers.get("content-type", "").split(";")[0].strip()
        if _JSON_TYPE.match(content_type):
            try:
                return msgspec.json.decode(content), False
            except msgspec.DecodeError:
                pass  # shown as text below
        elif not _TEXT_TYPE.search(content_type):
            return f"<{len(content)} bytes of {content_type}>", False
        try:
            text = content.decode(response.charset_encoding or "utf-8", errors="replace")
        except LookupError:
            text = content.decode("utf-8", errors="replace")
        return text[:MAX_TEXT_CHARS], len(text) > MAX_TEXT_CHARS
