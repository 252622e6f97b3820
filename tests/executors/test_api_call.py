"""The `api-call` executor: the address policy, the guarded transport, and real calls to a local server."""

from __future__ import annotations

import http
import ipaddress
import json
import re
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from urllib.parse import parse_qs, urlsplit

import anyio
import anyio.abc
import httpx
import msgspec
import pytest

from async_tasks.errors import InvalidParams, SettingsError
from async_tasks.executor import CallsOut, ExecutorRegistry
from async_tasks.progress import ProgressReporter
from async_tasks.settings import Settings
from async_tasks.system import TaskSystem
from async_tasks.testing import make_task, run_executor
from async_tasks.web.plugin import AsyncTasksPlugin
from executors import _outbound
from executors._guarded import GuardedTransport
from executors._outbound import (
    AllowList,
    OutboundPolicy,
    OutboundRefused,
    blocked_reason,
    parse_ipv4,
)
from executors.api_call import ApiCallExecutor, ApiCallFailed, ApiCallParams
from tests.helpers import SECRET

LOCAL = {"API_CALL_ALLOW_HOSTS": "127.0.0.1"}
REAL_RESOLVE = _outbound.resolve
STEP_NAMES = [
    "Preparing Request",
    "Resolving Host",
    "Sending Request",
    "Receiving Response",
    "Parsing Response",
]


# --- a fake resolver: names under .example resolve as the test says ------------------------

FAKE_DNS: dict[str, list[str]] = {
    "public.example": ["93.184.216.34"],
    "internal.example": ["10.0.0.1"],
    "mixed.example": ["93.184.216.34", "127.0.0.1"],
    "meta.example": ["169.254.169.254"],
    "ula.example": ["fd00::1"],
    "mapped.example": ["::ffff:127.0.0.1"],
    "cgnat.example": ["100.64.0.1"],
    "loop2.example": ["127.0.0.2"],
}


@pytest.fixture(autouse=True)
def dns(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """Resolve names from a table the test may change; `localhost` resolves for real."""
    table = dict(FAKE_DNS)

    async def fake_resolve(host: str, port: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        name = host.lower().rstrip(".")
        if name in table:
            return [ipaddress.ip_address(a) for a in table[name]]
        if name == "localhost":
            return await REAL_RESOLVE(host, port)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(_outbound, "resolve", fake_resolve)
    return table


# --- a listening socket that never accepts: counts connection attempts that got through ----


class Sink:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.port: int = sock.getsockname()[1]

    def connections(self) -> int:
        """Connections the kernel completed (each waits in the accept queue)."""
        count = 0
        while True:
            try:
                conn, _ = self.sock.accept()
            except BlockingIOError:
                return count
            conn.close()
            count += 1


@contextmanager
def sink(host: str = "127.0.0.1") -> Iterator[Sink]:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.bind((host, 0))
    except OSError as exc:
        sock.close()
        pytest.skip(f"cannot listen on {host}: {exc}")
    sock.listen(16)
    sock.setblocking(False)
    try:
        yield Sink(sock)
    finally:
        sock.close()


# --- a tiny HTTP/1.1 server on 127.0.0.1, run in the test's task group ----------------------


class LocalServer:
    def __init__(self) -> None:
        self.port = 0
        self.accepts = 0
        self.paths: list[str] = []

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def handle(self, stream: anyio.abc.SocketStream) -> None:
        self.accepts += 1
        async with stream:
            try:
                await self._serve(stream)
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                pass

    async def _serve(self, stream: anyio.abc.SocketStream) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            data += await stream.receive()
        head, _, body = data.partition(b"\r\n\r\n")
        request_line, *header_lines = head.decode("latin-1").split("\r\n")
        method, target, _ = request_line.split(" ", 2)
        headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in header_lines)}
        while len(body) < int(headers.get("content-length", "0")):
            body += await stream.receive()
        url = urlsplit(target)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        self.paths.append(url.path)

        async def reply(
            status: int,
            content: bytes = b"",
            content_type: str = "application/json",
            extra: dict[str, str] | None = None,
        ) -> None:
            lines = [
                f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}",
                f"Content-Type: {content_type}",
                f"Content-Length: {len(content)}",
                "Connection: close",
            ]
            lines += [f"{k}: {v}" for k, v in (extra or {}).items()]
            await stream.send("\r\n".join(lines).encode() + b"\r\n\r\n" + (b"" if method == "HEAD" else content))

        if url.path == "/json":
            await reply(200, b'{"hello": "world", "n": 1}')
        elif url.path == "/echo":
            echoed = {"method": method, "body": json.loads(body) if body else None, "headers": headers}
            await reply(200, json.dumps(echoed).encode())
        elif url.path == "/redirect":
            await reply(302, b"", "text/plain", {"Location": query["to"]})
        elif url.path == "/loop":
            await reply(302, b"", "text/plain", {"Location": "/loop"})
        elif url.path.startswith("/status/"):
            await reply(int(url.path.rsplit("/", 1)[1]), b'{"error": "nope"}')
        elif url.path == "/text":
            await reply(200, b"a" * 5000, "text/plain; charset=utf-8")
        elif url.path == "/binary":
            await reply(200, bytes(range(256)), "application/octet-stream")
        elif url.path == "/big":  # close-delimited, no Content-Length: the cap must count bytes
            await stream.send(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n")
            for _ in range(int(query.get("chunks", "100"))):
                await stream.send(b"x" * 1000)
        elif url.path == "/declared-big":
            await stream.send(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 10000000\r\n\r\nxx")
            await anyio.sleep_forever()
        elif url.path == "/hang":
            await anyio.sleep_forever()
        else:
            await reply(404, b'{"error": "not found"}')


@asynccontextmanager
async def local_server() -> AsyncIterator[LocalServer]:
    server = LocalServer()
    async with (
        await anyio.create_tcp_listener(local_host="127.0.0.1") as listener,
        anyio.create_task_group() as tg,
    ):
        server.port = listener.extra(anyio.abc.SocketAttribute.local_port)
        tg.start_soon(listener.serve, server.handle)  # bound and listening already: no wait needed
        try:
            yield server
        finally:
            tg.cancel_scope.cancel()


def params(endpoint: str, **fields: object) -> ApiCallParams:
    return msgspec.convert({"endpoint": endpoint, **fields}, ApiCallParams)


# --- validate: the refusal matrix --------------------------------------------------------

BLOCKED = [
    # schemes
    pytest.param("ftp://example.com/file", "not ftp://", id="ftp"),
    pytest.param("file:///etc/passwd", "not file://", id="file"),
    pytest.param("gopher://127.0.0.1:70/_stats", "not gopher://", id="gopher"),
    pytest.param("dict://127.0.0.1:11211/", "not dict://", id="dict"),
    pytest.param("ws://example.com/socket", "not ws://", id="ws"),
    pytest.param("javascript:alert(1)", "only http", id="javascript"),
    pytest.param("example.com/path", "only http", id="no-scheme"),
    # user info and missing host
    pytest.param("http://user:pass@127.0.0.1/", "user name or password", id="userinfo"),
    pytest.param("http://example.com@127.0.0.1/", "user name or password", id="userinfo-host-confusion"),
    pytest.param("http://user@public.example/", "user name or password", id="userinfo-public"),
    pytest.param("http:///path", "needs a host", id="no-host"),
    pytest.param("http://%31%32%37.0.0.1/", "percent-encoded", id="percent-encoded-host"),
    # loopback, every spelling
    pytest.param("http://127.0.0.1/", "127.0.0.1 is a loopback", id="loopback"),
    pytest.param("http://127.255.255.254:8080/", "loopback", id="loopback-range"),
    pytest.param("http://127.0.0.1./", "loopback", id="loopback-trailing-dot"),
    pytest.param("http://127.1/", "127.1 means 127.0.0.1, a loopback", id="short-form"),
    pytest.param("http://0177.0.0.1/", "not a valid url", id="octal"),  # httpx refuses 4-part octal itself
    pytest.param("http://0177.1/", "0177.1 means 127.0.0.1", id="octal-short"),
    pytest.param("http://0x7f.0.0.1/", "means 127.0.0.1", id="hex-dotted"),
    pytest.param("http://0x7f000001/", "means 127.0.0.1", id="hex"),
    pytest.param("http://2130706433/", "means 127.0.0.1", id="decimal"),
    pytest.param("http://017700000001/", "means 127.0.0.1", id="octal-whole"),
    pytest.param("http://[::1]/", "loopback", id="v6-loopback"),
    pytest.param("http://[0:0:0:0:0:0:0:1]:8080/", "loopback", id="v6-loopback-long"),
    pytest.param("http://[::ffff:127.0.0.1]/", "ipv4-mapped address for 127.0.0.1", id="v4-mapped"),
    pytest.param("http://[::ffff:7f00:1]/", "ipv4-mapped address for 127.0.0.1", id="v4-mapped-hex"),
    pytest.param("http://[::127.0.0.1]/", "ipv4-compatible address for 127.0.0.1", id="v4-compatible"),
    pytest.param("http://[::ffff:0:7f00:1]/", "ipv4-translated address for 127.0.0.1", id="v4-translated"),
    pytest.param("http://[64:ff9b::7f00:1]/", "nat64 address for 127.0.0.1", id="nat64-loopback"),
    pytest.param("http://[2002:7f00:1::]/", "6to4 address for 127.0.0.1", id="6to4-loopback"),
    # unspecified
    pytest.param("http://0/", "unspecified", id="zero"),
    pytest.param("http://0.0.0.0:3000/", "unspecified", id="zeros"),
    pytest.param("http://[::]/", "unspecified", id="v6-unspecified"),
    # private and shared
    pytest.param("http://10.0.0.1/", "private", id="rfc1918-10"),
    pytest.param("http://172.16.0.1/", "private", id="rfc1918-172"),
    pytest.param("http://172.31.255.255/", "private", id="rfc1918-172-top"),
    pytest.param("http://192.168.1.1/", "private", id="rfc1918-192"),
    pytest.param("http://0xa.1/", "means 10.0.0.1, a private", id="private-hex-short"),
    pytest.param("http://[::ffff:10.0.0.1]/", "for 10.0.0.1, a private", id="private-mapped"),
    pytest.param("http://[2002:a00:1::1]/", "6to4 address for 10.0.0.1", id="6to4-private"),
    pytest.param("http://100.64.0.1/", "carrier-grade nat", id="cgnat"),
    pytest.param("http://100.100.100.200/", "carrier-grade nat", id="alibaba-metadata"),
    pytest.param("http://[fc00::1]/", "private (unique local)", id="ula-fc"),
    pytest.param("http://[fd12:3456::1]/", "private (unique local)", id="ula-fd"),
    # link-local and metadata
    pytest.param("http://169.254.169.254/latest/meta-data/", "cloud metadata address", id="metadata-ip"),
    pytest.param("http://[::ffff:169.254.169.254]/", "cloud metadata address", id="metadata-mapped"),
    pytest.param("http://[64:ff9b::a9fe:a9fe]/", "nat64 address for 169.254.169.254", id="metadata-nat64"),
    pytest.param("http://[fd00:ec2::254]/", "cloud metadata address", id="metadata-aws-v6"),
    pytest.param("http://169.254.0.1/", "link-local", id="link-local"),
    pytest.param("http://[fe80::1]/", "link-local", id="v6-link-local"),
    pytest.param("http://[fe80::1%25eth0]/", "zone", id="v6-zone"),
    pytest.param("http://metadata.google.internal/computeMetadata/v1/", "metadata host name", id="gcp-name"),
    pytest.param("http://METADATA.GOOGLE.INTERNAL./", "metadata host name", id="gcp-name-upper-dot"),
    pytest.param("http://instance-data/latest/", "metadata host name", id="aws-name"),
    # multicast, broadcast, reserved, documentation
    pytest.param("http://224.0.0.1/", "multicast", id="multicast"),
    pytest.param("http://239.255.255.250:1900/", "multicast", id="ssdp"),
    pytest.param("http://[ff02::1]/", "multicast", id="v6-multicast"),
    pytest.param("http://255.255.255.255/", "broadcast", id="broadcast"),
    pytest.param("http://240.0.0.1/", "reserved", id="class-e"),
    pytest.param("http://192.0.2.1/", "documentation", id="test-net"),
    pytest.param("http://[2001:db8::1]/", "documentation", id="v6-documentation"),
    pytest.param("http://[::8.8.8.8]/", "ipv4-compatible", id="v4-compatible-public"),
    # names that resolve to refused addresses
    pytest.param("http://localhost/", "localhost is a loopback host name", id="localhost"),
    pytest.param("http://LOCALHOST./", "loopback", id="localhost-upper-dot"),
    pytest.param("http://localhost:3000/api", "loopback", id="localhost-port"),
    pytest.param("http://app.localhost/", "loopback", id="localhost-subdomain"),
    pytest.param("http://internal.example/", "internal.example resolves to 10.0.0.1, a private", id="dns-private"),
    pytest.param("http://mixed.example/", "resolves to 127.0.0.1", id="dns-one-of-two"),
    pytest.param("http://meta.example/", "cloud metadata address", id="dns-metadata"),
    pytest.param("http://ula.example/", "unique local", id="dns-v6-private"),
    pytest.param("http://mapped.example/", "ipv4-mapped", id="dns-mapped"),
    pytest.param("http://cgnat.example/", "carrier-grade", id="dns-cgnat"),
    # names that do not resolve
    pytest.param("http://nxdomain.example/", "cannot resolve host nxdomain.example", id="dns-failure"),
]


@pytest.mark.parametrize(("endpoint", "fragment"), BLOCKED)
async def test_validate_refuses_with_a_readable_message(endpoint: str, fragment: str) -> None:
    """Every blocked form is a 400 on `endpoint` saying why."""
    with pytest.raises(InvalidParams) as info:
        await ApiCallExecutor().validate(params(endpoint))
    assert info.value.field == "endpoint"
    assert fragment.lower() in str(info.value).lower()


def test_the_matrix_is_large_enough() -> None:
    assert len(BLOCKED) >= 40


async def test_refusal_message_says_what_to_change() -> None:
    with pytest.raises(InvalidParams) as info:
        await ApiCallExecutor().validate(params("https://internal.example/items"))
    assert str(info.value) == (
        "Refused: internal.example resolves to 10.0.0.1, a private address. "
        "Add the host to API_CALL_ALLOW_HOSTS to allow it."
    )


@pytest.mark.parametrize(
    "endpoint",
    [
        "https://public.example/items?page=2",
        "http://PUBLIC.EXAMPLE.:8080/",
        "http://8.8.8.8/",
        "http://134744072/",  # 8.8.8.8 as one number
        "http://[2606:4700:4700::1111]/",
        "http://[::ffff:8.8.8.8]/",
        "http://[64:ff9b::808:808]/",
        "http://[2002:808:808::1]/",
    ],
)
async def test_validate_accepts_public_targets(endpoint: str) -> None:
    await ApiCallExecutor().validate(params(endpoint))


@pytest.mark.parametrize(
    ("endpoint", "allowed"),
    [
        ("http://127.0.0.1:8080/", True),
        ("http://[::ffff:127.0.0.1]/", True),  # the same address, mapped
        ("http://internal.example/", True),
        ("http://INTERNAL.example./", True),
        ("http://10.1.2.3/", True),
        ("http://[::1]/", True),
        ("http://meta.example/", False),
        ("http://10.2.0.1/", False),
        ("http://127.0.0.2/", False),
        ("http://metadata.google.internal/", False),
        ("http://user@127.0.0.1/", False),  # the allow-list never relaxes the URL rules
        ("ftp://127.0.0.1/", False),
    ],
)
async def test_allow_list_exempts_exactly_its_hosts(endpoint: str, allowed: bool) -> None:
    executor = ApiCallExecutor.from_environ({"API_CALL_ALLOW_HOSTS": "127.0.0.1, internal.example, 10.1.0.0/16, [::1]"})
    if allowed:
        await executor.validate(params(endpoint))
    else:
        with pytest.raises(InvalidParams):
            await executor.validate(params(endpoint))


async def test_reserved_headers_are_refused() -> None:
    with pytest.raises(InvalidParams) as info:
        await ApiCallExecutor().validate(params("https://public.example/", headers={"Host": "intranet"}))
    assert info.value.field == "headers"


# --- the policy's parts --------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "127.1",
        "0177.0.0.1",
        "0x7f.0.0.1",
        "0x7f000001",
        "0X7F.1",
        "2130706433",
        "017700000001",
        "0",
        "00",
        "1.2.3",
        "1.16777215",
        "1.16777216",
        "256.1",
        "08",
        "0x",
        "4294967295",
        "4294967296",
        "0xffffffff",
        "1.2.3.4.5",
        "10.0.0.1",
        "1..2",
        "",
        "a.b.c.d",
        "127.0.0.1.",
        "0x1.0x2.0x3.0x4",
    ],
)
def test_ipv4_is_read_like_inet_aton(text: str) -> None:
    """What the policy sees is what the system resolver would connect to."""
    try:
        expected = socket.inet_ntoa(socket.inet_aton(text)) if text else None
    except OSError:
        expected = None
    parsed = parse_ipv4(text)
    assert (str(parsed) if parsed else None) == expected


def test_public_addresses_are_not_blocked() -> None:
    for text in [
        "8.8.8.8",
        "1.1.1.1",
        "93.184.216.34",
        "2606:4700:4700::1111",
        "::ffff:1.1.1.1",
        "2001:4860:4860::8888",
        "64:ff9b::101:101",
        "2002:101:101::1",
    ]:
        assert blocked_reason(ipaddress.ip_address(text)) is None, text


@pytest.mark.parametrize(
    "value", ["not a host!", "example.com:80800", "example.com:http", "10.0.0.0/33", "bücher.example"]
)
def test_a_bad_allow_list_is_a_settings_error(value: str) -> None:
    with pytest.raises(SettingsError, match="API_CALL_ALLOW_HOSTS"):
        ApiCallExecutor.from_environ({"API_CALL_ALLOW_HOSTS": value})


@pytest.mark.parametrize(
    "environ",
    [
        {"API_CALL_MAX_RESPONSE_BYTES": "lots"},
        {"API_CALL_MAX_TIMEOUT_MS": "10"},
        {"API_CALL_MAX_REDIRECTS": "-1"},
    ],
)
def test_bad_limits_are_settings_errors(environ: dict[str, str]) -> None:
    with pytest.raises(SettingsError, match=next(iter(environ))):
        ApiCallExecutor.from_environ(environ)


async def test_the_system_resolver_agrees_with_the_policy() -> None:
    """`localhost` and numeric spellings resolve to what the policy assumes."""
    assert any(ip.is_loopback for ip in await REAL_RESOLVE("localhost", 80))
    assert await REAL_RESOLVE("0x7f000001", 80) == [ipaddress.ip_address("127.0.0.1")]
    assert await REAL_RESOLVE("127.1", 80) == [ipaddress.ip_address("127.0.0.1")]


def test_allow_list_parsing() -> None:
    allow = AllowList.parse(" localhost., 127.1 ,10.0.0.0/8,, [::1], fd00::/8 ")
    assert allow.names == {"localhost"}
    assert [str(n) for n in allow.networks] == ["127.0.0.1/32", "10.0.0.0/8", "::1/128", "fd00::/8"]


# --- connect time: refused without validate, and nothing reaches the socket ------------------

CONNECT_BLOCKED = [
    "http://127.0.0.1:{port}/",
    "http://127.1:{port}/",
    "http://0x7f000001:{port}/",
    "http://2130706433:{port}/",
    "http://0177.0.1:{port}/",
    "http://0:{port}/",
    "http://[::ffff:127.0.0.1]:{port}/",
    "http://localhost:{port}/",
    "http://LOCALHOST.:{port}/",
    "http://mixed.example:{port}/",
]


@pytest.mark.parametrize("template", CONNECT_BLOCKED)
async def test_execute_without_validate_refuses_before_connecting(template: str) -> None:
    with sink() as target:
        with pytest.raises(OutboundRefused, match="Refused"):
            await run_executor(
                ApiCallExecutor,
                {"endpoint": template.format(port=target.port), "timeoutMs": 1000},
                validate=False,
            )
        assert target.connections() == 0


@pytest.mark.parametrize("template", CONNECT_BLOCKED)
async def test_the_transport_itself_refuses_to_connect(template: str) -> None:
    """The connection step re-checks, whatever checked (or did not check) the URL before."""
    with sink() as target:
        async with httpx.AsyncClient(
            transport=GuardedTransport(OutboundPolicy()), trust_env=False, timeout=1
        ) as client:
            with pytest.raises(OutboundRefused, match="Refused"):
                await client.get(template.format(port=target.port))
        assert target.connections() == 0


async def test_dns_rebinding_after_the_check_is_refused_at_connect(dns: dict[str, list[str]]) -> None:
    """The name passes validate and the pre-check, then resolves to loopback when connecting."""
    executor = ApiCallExecutor()

    async def sink_progress(percent: float, step: str | None, description: str | None) -> bool:
        if step == "Sending Request":
            dns["rebind.example"] = ["127.0.0.1"]
        return True

    dns["rebind.example"] = ["93.184.216.34"]
    with sink() as target:
        task = make_task(executor, {"endpoint": f"http://rebind.example:{target.port}/", "timeoutMs": 1000})
        await executor.validate(task.params)
        with pytest.raises(OutboundRefused, match=re.escape("rebind.example resolves to 127.0.0.1, a loopback")):
            await executor.execute(task, ProgressReporter(sink_progress, ApiCallExecutor.steps))
        assert target.connections() == 0


# --- real calls to a local server -----------------------------------------------------------


async def test_get_json_from_an_allowed_local_server() -> None:
    async with local_server() as server:
        run = await run_executor(ApiCallExecutor, {"endpoint": f"{server.base}/json"}, environ=LOCAL)
    result = run.result
    assert result["statusCode"] == 200
    assert result["body"] == {"hello": "world", "n": 1}
    assert result["url"] == f"{server.base}/json"
    assert result["method"] == "GET"
    assert result["headers"] == {"content-type": "application/json", "content-length": "26"}
    assert result["bytes"] == 26 and result["redirects"] == 0 and result["bodyTruncated"] is False
    assert isinstance(result["elapsedMs"], int)
    msgspec.json.encode(result)  # JSON-encodable as the task result
    percents = [r.percent for r in run.reports]
    assert percents == sorted(percents) and percents[-1] == 100
    assert run.steps == STEP_NAMES


async def test_an_allow_listed_name_is_resolved_and_called() -> None:
    """The demo setting: API_CALL_ALLOW_HOSTS=localhost lets a local API be called by name."""
    async with local_server() as server:
        run = await run_executor(
            ApiCallExecutor,
            {"endpoint": f"http://localhost:{server.port}/json"},
            environ={"API_CALL_ALLOW_HOSTS": "localhost"},
        )
    assert run.result["statusCode"] == 200 and run.result["body"]["hello"] == "world"


async def test_localhost_is_called_when_its_loopback_address_is_allowed_on_that_port() -> None:
    """The guide's setting: API_CALL_ALLOW_HOSTS=127.0.0.1:PORT, then a call to
    http://localhost:PORT (localhost means loopback, RFC 6761, and is never looked up)."""
    async with local_server() as server:
        allowed = ApiCallExecutor.from_environ({"API_CALL_ALLOW_HOSTS": f"127.0.0.1:{server.port}"})
        run = await run_executor(allowed, {"endpoint": f"http://localhost:{server.port}/json"})
    assert run.result["statusCode"] == 200 and run.result["body"]["hello"] == "world"


async def test_a_localhost_entry_allows_the_loopback_address_too() -> None:
    """API_CALL_ALLOW_HOSTS=localhost:PORT lets http://127.0.0.1:PORT through: the same address."""
    async with local_server() as server:
        allowed = ApiCallExecutor.from_environ({"API_CALL_ALLOW_HOSTS": f"localhost:{server.port}"})
        run = await run_executor(allowed, {"endpoint": f"{server.base}/json"})
    assert run.result["statusCode"] == 200


@pytest.mark.parametrize("endpoint", ["http://localhost:3002/", "http://127.0.0.1:3002/"])
async def test_a_host_allowed_on_another_port_is_refused_with_the_port_it_is_allowed_on(endpoint: str) -> None:
    """The refusal says the host is allowed on port 3001 only, and what to add for this one."""
    allowed = ApiCallExecutor.from_environ({"API_CALL_ALLOW_HOSTS": "127.0.0.1:3001"})
    with pytest.raises(InvalidParams) as info:
        await allowed.validate(params(endpoint))
    host = httpx.URL(endpoint).host
    assert str(info.value).endswith(
        f"API_CALL_ALLOW_HOSTS allows it on port 3001 only; add {host}:3002 to allow this port."
    )


async def test_post_sends_json_and_headers() -> None:
    async with local_server() as server:
        run = await run_executor(
            ApiCallExecutor,
            {
                "endpoint": f"{server.base}/echo",
                "method": "POST",
                "data": {"a": [1, 2]},
                "headers": {"X-Demo": "yes"},
            },
            environ=LOCAL,
        )
    body = run.result["body"]
    assert body["method"] == "POST" and body["body"] == {"a": [1, 2]}
    assert body["headers"]["x-demo"] == "yes"
    assert body["headers"]["content-type"] == "application/json"


async def test_head_has_no_body() -> None:
    async with local_server() as server:
        run = await run_executor(ApiCallExecutor, {"endpoint": f"{server.base}/json", "method": "HEAD"}, environ=LOCAL)
    assert run.result["statusCode"] == 200 and run.result["body"] is None


async def test_long_text_is_truncated_and_binary_summarised() -> None:
    async with local_server() as server:
        text = await run_executor(ApiCallExecutor, {"endpoint": f"{server.base}/text"}, environ=LOCAL)
        binary = await run_executor(ApiCallExecutor, {"endpoint": f"{server.base}/binary"}, environ=LOCAL)
    assert text.result["body"] == "a" * 2000 and text.result["bodyTruncated"] is True
    assert text.result["bytes"] == 5000
    assert binary.result["body"] == "<256 bytes of application/octet-stream>"


async def test_redirect_to_an_allowed_target_is_followed() -> None:
    async with local_server() as server:
        run = await run_executor(ApiCallExecutor, {"endpoint": f"{server.base}/redirect?to=/json"}, environ=LOCAL)
    assert run.result["url"] == f"{server.base}/json"
    assert run.result["redirects"] == 1
    assert server.paths == ["/redirect", "/json"]


REDIRECT_BLOCKED = [
    pytest.param("http://127.0.0.2:{port}/", "127.0.0.2", id="other-loopback"),
    pytest.param("http://0x7f000002:{port}/", "127.0.0.2", id="other-loopback-hex"),
    pytest.param("http://loop2.example:{port}/", "127.0.0.2", id="name-to-loopback"),
    pytest.param("http://[::1]:{port}/", "::1", id="v6-loopback"),
    pytest.param("http://169.254.169.254/latest/meta-data/", None, id="metadata"),
    pytest.param("http://internal.example/", None, id="name-to-private"),
    pytest.param("ftp://127.0.0.1/", None, id="ftp"),
    pytest.param("http://user:pw@127.0.0.1:{server}/json", None, id="userinfo"),
]


@pytest.mark.parametrize(("template", "sink_host"), REDIRECT_BLOCKED)
async def test_redirect_from_allowed_to_blocked_is_refused(template: str, sink_host: str | None) -> None:
    with sink(sink_host or "127.0.0.1") as target:
        async with local_server() as server:
            location = template.format(port=target.port, server=server.port)
            with pytest.raises(OutboundRefused, match="Refused"):
                await run_executor(
                    ApiCallExecutor, {"endpoint": f"{server.base}/redirect?to={location}"}, environ=LOCAL
                )
            assert server.paths == ["/redirect"]
        assert target.connections() == 0


async def test_redirects_are_capped() -> None:
    async with local_server() as server:
        with pytest.raises(ApiCallFailed, match=r"stopped after 2 redirects \(API_CALL_MAX_REDIRECTS\)"):
            await run_executor(
                ApiCallExecutor,
                {"endpoint": f"{server.base}/loop"},
                environ={**LOCAL, "API_CALL_MAX_REDIRECTS": "2"},
            )
        assert server.paths == ["/loop"] * 3


@pytest.mark.parametrize(("status", "phrase"), [(503, "Service Unavailable"), (404, "Not Found")])
async def test_error_status_fails_the_task(status: int, phrase: str) -> None:
    async with local_server() as server:
        url = f"{server.base}/status/{status}"
        with pytest.raises(ApiCallFailed) as info:
            await run_executor(ApiCallExecutor, {"endpoint": url}, environ=LOCAL)
    assert str(info.value) == f"GET {url} returned {status} {phrase}."


async def test_response_over_the_cap_is_cut_off_while_streaming() -> None:
    async with local_server() as server:
        with pytest.raises(ApiCallFailed, match=r"larger than the 4 KiB limit \(API_CALL_MAX_RESPONSE_BYTES\)"):
            await run_executor(
                ApiCallExecutor,
                {"endpoint": f"{server.base}/big?chunks=1000"},
                environ={**LOCAL, "API_CALL_MAX_RESPONSE_BYTES": "4096"},
            )


async def test_declared_length_over_the_cap_fails_before_reading() -> None:
    async with local_server() as server:
        with pytest.raises(ApiCallFailed, match=r"announced a 10,000,000-byte response, over the 4 KiB limit"):
            await run_executor(
                ApiCallExecutor,
                {"endpoint": f"{server.base}/declared-big"},
                environ={**LOCAL, "API_CALL_MAX_RESPONSE_BYTES": "4096"},
            )


@pytest.mark.parametrize(
    ("timeout_ms", "environ", "limit"),
    [(200, LOCAL, 200), (10_000, {**LOCAL, "API_CALL_MAX_TIMEOUT_MS": "150"}, 150)],
)
async def test_a_server_that_never_answers_times_out(timeout_ms: int, environ: dict[str, str], limit: int) -> None:
    async with local_server() as server:
        started = anyio.current_time()
        with pytest.raises(ApiCallFailed, match=rf"timed out after {limit} ms"):
            await run_executor(
                ApiCallExecutor, {"endpoint": f"{server.base}/hang", "timeoutMs": timeout_ms}, environ=environ
            )
        assert anyio.current_time() - started < limit / 1000 + 1


async def test_connection_refused_is_a_readable_failure() -> None:
    with sink() as closed:
        port = closed.port
    with pytest.raises(ApiCallFailed, match=rf"GET http://127.0.0.1:{port}/ failed: "):
        await run_executor(ApiCallExecutor, {"endpoint": f"http://127.0.0.1:{port}/"}, environ=LOCAL)


# --- params and registration -----------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        {"endpoint": "https://public.example/", "method": "TRACE"},
        {"endpoint": "https://public.example/", "method": "get"},
        {"endpoint": "https://public.example/" + "a" * 2030},
        {"endpoint": ""},
        {},
        {"endpoint": "https://public.example/", "url": "https://other.example/"},
        {"endpoint": "https://public.example/", "timeout_ms": 500},
        {"endpoint": "https://public.example/", "timeoutMs": 50},
        {"endpoint": "https://public.example/", "timeoutMs": 30_001},
        {"endpoint": "https://public.example/", "headers": {f"x-{i}": "v" for i in range(51)}},
        {"endpoint": "https://public.example/", "headers": {"Bad Header": "v"}},
        {"endpoint": "https://public.example/", "headers": {"X-A": "v\r\nInjected: 1"}},
        {"endpoint": "https://public.example/", "headers": {"X-A": "x" * 4097}},
    ],
)
def test_params_are_bounded(raw: dict[str, object]) -> None:
    with pytest.raises(msgspec.ValidationError):
        make_task(ApiCallExecutor(), raw)


def test_params_are_camel_case_with_documented_bounds() -> None:
    task = make_task(ApiCallExecutor(), {"endpoint": "https://public.example/", "timeoutMs": 500})
    assert task.params.timeout_ms == 500 and task.params.method == "GET"
    schema = msgspec.json.schema(ApiCallParams)["$defs"]["ApiCallParams"]["properties"]
    assert schema["endpoint"]["maxLength"] == 2048
    assert (schema["timeoutMs"]["minimum"], schema["timeoutMs"]["maximum"]) == (100, 30_000)
    assert schema["headers"]["anyOf"][0]["maxProperties"] == 50


def test_registers_like_any_executor() -> None:
    registry = ExecutorRegistry.build([ApiCallExecutor], load_entry_points=False, environ={})
    executor = registry.get("api-call")
    assert isinstance(executor, ApiCallExecutor)
    assert [step.name for step in executor.steps] == STEP_NAMES
    assert executor.title == "External API Call" and executor.description


# --- the confused deputy: the server's own address and identity headers ----------------------


class Own:
    """Where a (pretend) server listens, as the web door tells the executor (`CallsOut.avoid`)."""

    def __init__(self, port: int, *hosts: str) -> None:
        self.ports = {port}
        self.hosts = set(hosts or ("127.0.0.1",))


def executor_on(port: int, *hosts: str, allow: str = "127.0.0.1") -> ApiCallExecutor:
    executor = ApiCallExecutor.from_environ({"API_CALL_ALLOW_HOSTS": allow})
    assert isinstance(executor, ApiCallExecutor)
    executor.avoid(Own(port, *hosts))
    return executor


@pytest.mark.parametrize(
    "template",
    [
        "http://127.0.0.1:{port}/api/v1/tasks",
        "http://127.0.0.2:{port}/api/v1/tasks",
        "http://localhost:{port}/",
        "http://[::ffff:127.0.0.1]:{port}/",
        "http://0.0.0.0:{port}/",
    ],
)
async def test_the_servers_own_address_is_refused_even_when_allowed(template: str) -> None:
    """With API_CALL_ALLOW_HOSTS covering loopback, the server's own port is still refused
    (validate, and at connect time without validate), and nothing connects."""
    with sink() as target:
        executor = executor_on(target.port, allow="127.0.0.0/8,localhost,::ffff:127.0.0.1,0.0.0.0")
        params = msgspec.convert({"endpoint": template.format(port=target.port)}, ApiCallParams)
        with pytest.raises(InvalidParams, match="this server's own address"):
            await executor.validate(params)
        with pytest.raises(OutboundRefused, match="own address"):
            await run_executor(executor, {"endpoint": template.format(port=target.port)}, validate=False)
        assert target.connections() == 0


async def test_the_web_door_tells_api_call_where_its_server_listens() -> None:
    """The plugin hands api-call the addresses its server is bound to and reached on; the
    engine alone hands it none (there is no server to protect)."""
    executor = ApiCallExecutor.from_environ({"API_CALL_ALLOW_HOSTS": "127.0.0.1"})
    plugin = AsyncTasksPlugin([executor], settings=Settings(secret_key=SECRET), load_entry_points=False)
    plugin.server_addresses.add("127.0.0.1", 3000)  # as the server or the boundary middleware does
    params = msgspec.convert({"endpoint": "http://127.0.0.1:3000/api/v1/tasks"}, ApiCallParams)
    with pytest.raises(InvalidParams, match="this server's own address"):
        await executor.validate(params)
    alone = ApiCallExecutor.from_environ({"API_CALL_ALLOW_HOSTS": "127.0.0.1"})
    TaskSystem([alone], settings=Settings(), load_entry_points=False)
    assert isinstance(alone, ApiCallExecutor) and alone.own is None
    assert isinstance(executor, CallsOut)


async def test_other_ports_of_an_allowed_host_still_work() -> None:
    async with local_server() as server:
        executor = executor_on(server.port + 1)
        run = await run_executor(executor, {"endpoint": f"{server.base}/json"})
        assert run.result["statusCode"] == 200


async def test_a_server_bound_to_every_interface_is_refused_on_a_lan_address() -> None:
    """Bound to 0.0.0.0, the server answers on the machine's LAN address too: a connection
    to its port that lands on this machine is dropped, even with the address allowed."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("192.0.2.1", 9))  # no packet is sent: this picks the outbound interface
            lan = probe.getsockname()[0]
    except OSError:
        pytest.skip("no non-loopback interface")
    if ipaddress.ip_address(lan).is_loopback:
        pytest.skip("no non-loopback interface")
    with sink("0.0.0.0") as target:
        executor = executor_on(target.port, "0.0.0.0", allow=lan)
        with pytest.raises(OutboundRefused, match="own address"):
            await run_executor(executor, {"endpoint": f"http://{lan}:{target.port}/"})
        # The TCP handshake happened (that is how the machine is recognised); no request was sent.
        assert target.connections() <= 1


def test_allow_list_entries_may_name_a_port() -> None:
    allow = AllowList.parse("127.0.0.1:8080, localhost:9000, [::1]:7000, 10.0.0.0/8, api.local")
    assert allow.allows_ip(ipaddress.ip_address("127.0.0.1"), 8080)
    assert not allow.allows_ip(ipaddress.ip_address("127.0.0.1"), 8081)
    assert allow.allows_ip(ipaddress.ip_address("::1"), 7000) and not allow.allows_ip(ipaddress.ip_address("::1"), 1)
    assert allow.allows_name("LOCALHOST.", 9000) and not allow.allows_name("localhost", 9001)
    assert allow.allows_ip(ipaddress.ip_address("10.1.2.3"), 1) and allow.allows_name("api.local", 1)


async def test_a_port_scoped_allow_entry_refuses_other_ports() -> None:
    async with local_server() as server:
        allowed = ApiCallExecutor.from_environ({"API_CALL_ALLOW_HOSTS": f"127.0.0.1:{server.port}"})
        run = await run_executor(allowed, {"endpoint": f"{server.base}/json"})
        assert run.result["statusCode"] == 200
        other = msgspec.convert({"endpoint": f"http://127.0.0.1:{server.port + 1}/"}, ApiCallParams)
        with pytest.raises(InvalidParams, match="loopback"):
            await allowed.validate(other)


@pytest.mark.parametrize(
    "header",
    [
        "Cookie",
        "X-Session-Token",
        "Authorization",
        "X-API-Key",
        "Forwarded",
        "X-Forwarded-For",
        "x-forwarded-host",
        "X-Real-IP",
        "Host",
    ],
)
async def test_headers_carrying_identity_or_routing_are_refused(header: str) -> None:
    params = msgspec.convert({"endpoint": "http://public.example/", "headers": {header: "203.0.113.7"}}, ApiCallParams)
    with pytest.raises(InvalidParams) as caught:
        await ApiCallExecutor().validate(params)
    assert caught.value.field == "headers" and header in caught.value.message
    with pytest.raises(InvalidParams):  # and again if execute runs without validate
        await run_executor(
            ApiCallExecutor, {"endpoint": "http://public.example/", "headers": {header: "x"}}, validate=False
        )
