"""Settings from environment variables, validated once at start-up.

`load_env` works for any msgspec Struct whose encoded field names are the variable
names (``rename="upper"``); executors use it for their own `Config` too. A bad value
raises `SettingsError` with one line naming the variable and what it takes.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
from collections.abc import Mapping
from typing import Annotated, Literal, Self, TypeVar

import msgspec

from async_tasks.errors import SettingsError
from async_tasks.task_log import DEFAULT_LINE_BYTES, DEFAULT_LINES, DEFAULT_TASK_BYTES, LogLimits

S = TypeVar("S", bound=msgspec.Struct)

NonNegative = Annotated[int, msgspec.Meta(ge=0)]
Positive = Annotated[int, msgspec.Meta(ge=1)]
_PATH = re.compile(r" - at `\$\.([A-Za-z0-9_]+)`")
_ORIGIN = re.compile(r"^(https?)://([a-z0-9.-]+|\[[0-9a-f:.]+\])(:(\d{1,5}|\*))?$")
_KEY_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,39}$")
_HOST = re.compile(r"^(\*\.)?[a-z0-9_-]+(\.[a-z0-9_-]+)*\.?$")
#: Shortest API key or metrics token accepted (like SECRET_KEY).
MIN_KEY_LENGTH = 16


def load_env(struct_type: type[S], environ: Mapping[str, str] | None = None) -> S:
    """Build `struct_type` from the variables in `environ` (default: `os.environ`)."""
    environ = os.environ if environ is None else environ
    names = {f.encode_name for f in msgspec.structs.fields(struct_type)}
    raw = {name: environ[name].strip() for name in names if name in environ and environ[name].strip() != ""}
    try:
        return msgspec.convert(raw, struct_type, strict=False)
    except msgspec.ValidationError as exc:
        message = str(exc)
        match = _PATH.search(message)
        if match is None:
            raise SettingsError(f"Invalid settings: {message}") from None
        name = match.group(1)
        what = message[: match.start()].replace("Expected", "expected")
        raise SettingsError(f"Invalid value {raw.get(name)!r} for {name}: {what}") from None


class EngineSettings(msgspec.Struct, rename="upper", frozen=True, kw_only=True):
    """The engine's settings: retention, limits, execution policies, logs. Times in milliseconds.

    The settings are parts read from one flat environment: `EngineSettings` (what the
    engine reads: the cleaner, the execution backends, the store's policy), extended by
    `BackendSettings` (where tasks live and run: what `TaskSystem` and the backends take),
    extended by `Settings` (every setting: the web door's too). Each part validates its
    own fields, so an engine used alone never reads or checks the web door's.
    """

    # Retention (per session) and the cleaner.
    max_completed_tasks: NonNegative = 50
    max_failed_tasks: NonNegative = 20
    max_cancelled_tasks: NonNegative = 20
    task_cleanup_interval: Annotated[int, msgspec.Meta(ge=100, le=86_400_000)] = 300_000
    # Execution policies: global bounds and defaults.
    max_concurrent_tasks: Positive = 1000
    max_concurrent_tasks_per_session: Positive = 100
    max_active_tasks_per_session: Positive = 1000
    # Server-wide memory bounds: every session together.
    max_tasks: Positive = 10_000
    max_sessions: Positive = 1000
    #: Encoded size (JSON) of one task's params + metadata + tags.
    max_task_data_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 65_536
    #: History entries kept per task (the first ones and the latest).
    max_task_history: Annotated[int, msgspec.Meta(ge=3)] = 50
    # Task logs (`await progress.log(...)`): lines kept per task (the oldest go first), the
    # bytes of one line's message and data, and the bytes of a task's lines together.
    task_log_lines: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = DEFAULT_LINES
    task_log_line_bytes: Annotated[int, msgspec.Meta(ge=256, le=65_536)] = DEFAULT_LINE_BYTES
    task_log_bytes: Annotated[int, msgspec.Meta(ge=1024, le=4_194_304)] = DEFAULT_TASK_BYTES
    # Time limits (0 disables each): finished tasks, never-started tasks, idle sessions.
    finished_task_ttl_ms: NonNegative = 86_400_000
    pending_task_ttl_ms: NonNegative = 3_600_000
    session_idle_ttl_ms: NonNegative = 3_600_000
    # Budgets of one client (an address: `async_tasks.clients`), sized so that a room of
    # people behind one NAT address is served; beyond them, and when a shared pool is
    # full, room is made from the largest holder.
    #: Sessions holding tasks that one client started.
    max_sessions_per_client: Positive = 250
    #: Tasks held across one client's sessions.
    max_tasks_per_client: Positive = 5000
    task_create_rate: Annotated[float, msgspec.Meta(ge=0)] = 100.0
    task_create_burst: Positive = 200
    #: Reads (task, status, list, stats) per second of one session, in each API process (0: no limit).
    task_read_rate: Annotated[float, msgspec.Meta(ge=0)] = 200.0
    task_read_burst: Positive = 400
    #: How long an Idempotency-Key is remembered after its create, even once its task is gone (0: as long
    #: as its task).
    idempotency_key_ttl_ms: NonNegative = 86_400_000
    default_task_timeout_ms: Annotated[int, msgspec.Meta(ge=1)] = 600_000
    max_task_timeout_ms: Annotated[int, msgspec.Meta(ge=1)] = 3_600_000
    max_task_retries: Annotated[int, msgspec.Meta(ge=0, le=100)] = 10
    retry_backoff_ms: Annotated[int, msgspec.Meta(ge=0)] = 500
    #: How far ahead a task's `startAt` may be (7 days).
    max_start_delay_ms: Positive = 604_800_000
    retry_backoff_max_ms: Annotated[int, msgspec.Meta(ge=0)] = 30_000
    max_result_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 1_048_576
    shutdown_grace_ms: NonNegative = 5000
    # Logs.
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["text", "json"] = "text"

    def __post_init__(self) -> None:
        if self.task_log_bytes < self.task_log_line_bytes:
            raise SettingsError(
                f"Invalid value {self.task_log_bytes} for TASK_LOG_BYTES: it must be at least TASK_LOG_LINE_BYTES "
                f"({self.task_log_line_bytes}), so that a task can keep its longest line"
            )

    @property
    def log_limits(self) -> LogLimits:
        """TASK_LOG_LINES, TASK_LOG_LINE_BYTES and TASK_LOG_BYTES as the bounds of task logs."""
        return LogLimits(lines=self.task_log_lines, line_bytes=self.task_log_line_bytes, task_bytes=self.task_log_bytes)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Self:
        """This part (and the parts it extends) from the environment (default: `os.environ`)."""
        return load_env(cls, environ)


class BackendSettings(EngineSettings, frozen=True, kw_only=True):
    """The engine's settings and where tasks live and run (`async_tasks.backends`): what
    `TaskSystem`, the backends and a worker process take."""

    # Backend: `memory` (one process), a Redis URL (needs the `redis` extra) or a PostgreSQL
    # URL (the `postgres` extra): many API processes and SAQ workers.
    task_backend: str = "memory"
    redis_key_prefix: Annotated[str, msgspec.Meta(min_length=1, max_length=100)] = "async-tasks:"
    worker_concurrency: Positive = 10
    #: The executors a worker runs, comma-separated (empty: every registered one); it takes
    #: tasks of these only (``async-tasks worker --executors``).
    worker_executors: str = ""
    worker_lease_ms: Annotated[int, msgspec.Meta(ge=300, le=600_000)] = 3000
    #: How long a request waits for Redis before it answers 503 (a hung or unreachable Redis).
    redis_timeout_ms: Annotated[int, msgspec.Meta(ge=100, le=60_000)] = 2000
    #: The PostgreSQL schema a deployment's tables live in (one per deployment sharing a database).
    postgres_schema: Annotated[str, msgspec.Meta(pattern=r"^[a-z_][a-z0-9_]{0,47}$")] = "async_tasks"
    #: How long a request waits for PostgreSQL before it answers 503 (a hung or unreachable server).
    postgres_timeout_ms: Annotated[int, msgspec.Meta(ge=100, le=60_000)] = 2000
    embedded_worker: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.task_backend != "memory":
            from async_tasks.backends import SCHEMES, scheme_of

            if scheme_of(self.task_backend) not in SCHEMES or "://" not in self.task_backend:
                raise SettingsError(
                    f"Invalid value {self.task_backend!r} for TASK_BACKEND: expected `memory`, a Redis URL "
                    "(redis://host:port/db) or a PostgreSQL URL (postgresql://user@host:port/database)"
                )

    @property
    def worker_executor_names(self) -> tuple[str, ...]:
        """WORKER_EXECUTORS as names (empty: every registered executor)."""
        return tuple(_split(self.worker_executors))


class Settings(BackendSettings, frozen=True, kw_only=True):
    """Every setting, with its documented name and default: the engine's and the backend's
    (`BackendSettings`) and the web door's (the server, sessions, browsers and shared
    networks, push streams, operations). Times in milliseconds."""

    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 3000
    # Sessions.
    enable_session_isolation: bool = True
    auto_map_session_by_ip: bool = True
    secret_key: str | None = None
    session_max_age: Annotated[int, msgspec.Meta(ge=60)] = 7 * 24 * 3600
    session_cookie_secure: bool = False
    trust_proxy_headers: bool = False
    #: Proxies whose X-Forwarded-For/-Proto are believed with TRUST_PROXY_HEADERS
    #: (uvicorn's variable: comma-separated IPs or CIDRs, or "*").
    forwarded_allow_ips: str = "127.0.0.1,::1"
    # Browsers and shared networks (see `async_tasks.web.security`).
    #: Front-end origins allowed to call the API from a browser (CORS), comma-separated.
    cors_allow_origins: str = ""
    #: Host names accepted in the Host header besides loopback names, IP literals and HOST.
    allowed_hosts: str = ""
    #: When set (comma-separated), every API request needs one of these keys.
    api_keys: str | None = None
    #: When set, GET /metrics needs it as a bearer token.
    metrics_token: str | None = None
    #: When set (comma-separated, each ``key`` or ``name:key``), the admin API and page are
    #: on, and need one of these keys as a bearer token.
    admin_api_keys: str | None = None
    #: Seconds a stream ticket (for EventSource/WebSocket with a token session) stays valid.
    stream_ticket_ttl: Annotated[int, msgspec.Meta(ge=5, le=3600)] = 60
    #: Seconds a share link (POST /tasks/{id}/share: one task, read-only) stays valid.
    share_link_ttl: Annotated[int, msgspec.Meta(ge=10, le=86_400)] = 600
    # Push streams (SSE and WebSocket) open at once.
    max_streams: Positive = 1000
    max_streams_per_session: Positive = 16
    #: Push streams one client holds open (in each API process, as MAX_STREAMS).
    max_streams_per_client: Positive = 250
    #: New sessions one client may start per minute (all at once too); 0: no limit.
    new_sessions_per_client_per_minute: NonNegative = 120
    # Request bounds.
    max_request_body_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 1_048_576
    # Operations: Prometheus /metrics, OpenTelemetry tracing (needs the `otel` extra), readiness.
    metrics_enabled: bool = True
    otel_enabled: bool = False
    ready_max_loop_lag_ms: Positive = 500

    def __post_init__(self) -> None:
        for key in self.secret_keys:
            if len(key) < 16:
                raise SettingsError("Invalid value for SECRET_KEY: each comma-separated key needs 16+ characters")
        for name, keys in (("API_KEYS", self.api_key_list), ("METRICS_TOKEN", _split(self.metrics_token or ""))):
            if any(len(key) < MIN_KEY_LENGTH for key in keys):
                raise SettingsError(f"Invalid value for {name}: each key needs {MIN_KEY_LENGTH}+ characters")
        self.admin_keys  # noqa: B018 (parsing validates)
        if self.metrics_token is not None and len(_split(self.metrics_token)) > 1:
            raise SettingsError("Invalid value for METRICS_TOKEN: one token, without commas")
        self.cors_origins  # noqa: B018 (parsing validates)
        self.allowed_host_names  # noqa: B018
        self.forwarded_networks  # noqa: B018
        super().__post_init__()
        if self.task_backend != "memory" and not self.secret_keys:
            from async_tasks.backends import scheme_of

            raise SettingsError(
                f"TASK_BACKEND is {scheme_of(self.task_backend)} but SECRET_KEY is not set: every process must "
                "sign sessions with the same key (16+ characters)"
            )

    @property
    def cors_origins(self) -> tuple[str, ...]:
        """CORS_ALLOW_ORIGINS as normalized origins (``scheme://host[:port]``; ``:*`` for any port)."""
        origins = []
        for entry in _split(self.cors_allow_origins):
            origin = entry.lower().rstrip("/")
            if origin in ("*", "null"):
                raise SettingsError(
                    f"Invalid value {entry!r} for CORS_ALLOW_ORIGINS: list each front-end origin, e.g. "
                    "http://localhost:5173 (any web page could otherwise act in your sessions)"
                )
            if not _ORIGIN.match(origin):
                raise SettingsError(
                    f"Invalid value {entry!r} for CORS_ALLOW_ORIGINS: expected scheme://host[:port], "
                    "e.g. http://localhost:5173 (no path; ':*' allows any port)"
                )
            origins.append(origin)
        return tuple(origins)

    @property
    def allowed_host_names(self) -> tuple[str, ...]:
        """ALLOWED_HOSTS as lower-case names (``*.example.com`` for subdomains, ``*`` for any)."""
        names = []
        for entry in _split(self.allowed_hosts):
            name = entry.lower().rstrip(".")
            if name != "*" and not _HOST.match(name):
                raise SettingsError(
                    f"Invalid value {entry!r} for ALLOWED_HOSTS: expected host names without ports, "
                    "e.g. demo.example.com or *.example.com ('*' accepts any)"
                )
            names.append(name)
        return tuple(names)

    @property
    def api_key_list(self) -> tuple[str, ...]:
        return tuple(_split(self.api_keys or ""))

    @property
    def admin_keys(self) -> dict[str, str]:
        """ADMIN_API_KEYS as key -> who holds it, for the logs: the entry's name (``name:key``)
        or the key's fingerprint (``key 1a2b3c4d``, the start of its SHA-256), never the key."""
        keys: dict[str, str] = {}
        for entry in _split(self.admin_api_keys or ""):
            name, sep, key = entry.partition(":")
            if not (sep and _KEY_NAME.match(name) and len(key.strip()) >= MIN_KEY_LENGTH):
                name, key = "", entry
            key = key.strip()
            if len(key) < MIN_KEY_LENGTH:
                raise SettingsError(
                    f"Invalid value for ADMIN_API_KEYS: each key needs {MIN_KEY_LENGTH}+ characters "
                    "(an entry is key or name:key)"
                )
            if key in keys or key in self.api_key_list:
                raise SettingsError(
                    "Invalid value for ADMIN_API_KEYS: each admin key must differ from the others and from API_KEYS"
                )
            keys[key] = name or f"key {hashlib.sha256(key.encode()).hexdigest()[:8]}"
        return keys

    @property
    def forwarded_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] | None:
        """FORWARDED_ALLOW_IPS as networks; None for "*" (every peer is a trusted proxy)."""
        entries = _split(self.forwarded_allow_ips)
        if "*" in entries:
            return None
        networks = []
        for entry in entries:
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                raise SettingsError(
                    f"Invalid value {entry!r} for FORWARDED_ALLOW_IPS: expected IP addresses or CIDR networks, or '*'"
                ) from None
        return tuple(networks)

    @property
    def secret_keys(self) -> list[str]:
        """SECRET_KEY split on commas, newest (the signing key) first."""
        if not self.secret_key:
            return []
        return [key.strip() for key in self.secret_key.split(",") if key.strip()]


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]
