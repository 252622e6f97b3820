"""Settings from the environment: seed defaults, and one clear line for a bad value."""

from __future__ import annotations

import os
import subprocess
import sys

import msgspec
import pytest

from async_tasks.errors import SettingsError
from async_tasks.server import serve
from async_tasks.settings import BackendSettings, EngineSettings, Settings
from async_tasks.worker import run_worker
from tests.servers import free_port


def test_defaults_are_the_seeds() -> None:
    settings = Settings.from_env({})
    assert (settings.max_completed_tasks, settings.max_failed_tasks, settings.task_cleanup_interval) == (
        50,
        20,
        300_000,
    )
    assert settings.enable_session_isolation and settings.auto_map_session_by_ip
    assert (settings.host, settings.port) == ("127.0.0.1", 3000)


def test_values_are_read_and_converted() -> None:
    settings = Settings.from_env(
        {"MAX_COMPLETED_TASKS": "5", "AUTO_MAP_SESSION_BY_IP": "false", "PORT": " 8080 ", "LOG_LEVEL": "debug"}
    )
    assert (settings.max_completed_tasks, settings.auto_map_session_by_ip, settings.port, settings.log_level) == (
        5,
        False,
        8080,
        "debug",
    )


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("MAX_COMPLETED_TASKS", "-1"),
        ("MAX_FAILED_TASKS", "many"),
        ("TASK_CLEANUP_INTERVAL", "5"),
        ("ENABLE_SESSION_ISOLATION", "perhaps"),
        ("PORT", "70000"),
        ("LOG_LEVEL", "loud"),
        ("MAX_CONCURRENT_TASKS", "0"),
        ("TASK_CREATE_RATE", "-3"),
        ("SHUTDOWN_GRACE_MS", "1.5"),
    ],
)
def test_bad_value_names_the_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({name: value})
    message = str(caught.value)
    assert name in message and value in message and "\n" not in message


def test_short_secret_key_is_refused() -> None:
    with pytest.raises(SettingsError, match="SECRET_KEY"):
        Settings.from_env({"SECRET_KEY": "short"})


@pytest.mark.e2e
def test_serve_stops_with_one_line_naming_the_variable() -> None:
    env = {**os.environ, "MAX_COMPLETED_TASKS": "lots"}
    result = subprocess.run(
        [sys.executable, "-m", "async_tasks.cli", "serve"], env=env, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "MAX_COMPLETED_TASKS" in lines[0] and "'lots'" in lines[0]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("MAX_TASKS", "0"),
        ("MAX_SESSIONS", "none"),
        ("MAX_TASK_DATA_BYTES", "100"),
        ("MAX_TASK_HISTORY", "2"),
        ("PENDING_TASK_TTL_MS", "-1"),
        ("MAX_STREAMS_PER_SESSION", "0"),
        ("STREAM_TICKET_TTL", "1"),
        ("SHARE_LINK_TTL", "5"),
        ("SHARE_LINK_TTL", "forever"),
        ("ALLOWED_HOSTS", "example.com:8080"),
        ("CORS_ALLOW_ORIGINS", "*"),
        ("FORWARDED_ALLOW_IPS", "proxy.local"),
        ("MAX_SESSIONS_PER_CLIENT", "0"),
        ("MAX_TASKS_PER_CLIENT", "lots"),
        ("MAX_STREAMS_PER_CLIENT", "-5"),
        ("NEW_SESSIONS_PER_CLIENT_PER_MINUTE", "-1"),
        ("NEW_SESSIONS_PER_CLIENT_PER_MINUTE", "2.5"),
    ],
)
def test_the_boundary_settings_are_checked_at_start_up(name: str, value: str) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({name: value})
    message = str(caught.value)
    assert name in message and value in message and "\n" not in message


@pytest.mark.parametrize("name", ["API_KEYS", "METRICS_TOKEN"])
def test_short_keys_are_refused_without_echoing_them(name: str) -> None:
    with pytest.raises(SettingsError, match=name) as caught:
        Settings.from_env({name: "short-secret"})
    assert "short-secret" not in str(caught.value)


def test_the_boundary_defaults_keep_the_demo_open_on_this_machine() -> None:
    settings = Settings.from_env({})
    assert settings.cors_origins == () and settings.allowed_host_names == () and settings.api_key_list == ()
    assert settings.metrics_token is None and not settings.trust_proxy_headers


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "demo.example"])
def test_listening_beyond_this_machine_without_api_keys_is_one_warning_line(host: str) -> None:
    """HOST=0.0.0.0 (or any address other machines reach) with no API_KEYS: one line says so
    and what to set; with API keys, or on loopback, nothing."""
    from async_tasks.web.security import exposure_warning

    line = exposure_warning(host, Settings.from_env({}))
    assert line is not None and host in line and "API_KEYS" in line and "\n" not in line
    assert exposure_warning(host, Settings.from_env({"API_KEYS": "k" * 16})) is None


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.2"])
def test_a_loopback_host_needs_no_warning(host: str) -> None:
    from async_tasks.web.security import exposure_warning

    assert exposure_warning(host, Settings.from_env({})) is None


def test_the_client_budgets_serve_a_room_behind_one_address() -> None:
    """The defaults leave a room of about 50 people behind one NAT address room to spare
    (about 150 sessions and streams, 2500 tasks, everyone arriving in the same minute), and
    one address still cannot fill a shared pool alone."""
    settings = Settings.from_env({})
    assert settings.max_sessions_per_client >= 200 and settings.max_streams_per_client >= 200
    assert settings.max_tasks_per_client >= 4000 and settings.new_sessions_per_client_per_minute >= 100
    assert settings.max_sessions_per_client < settings.max_sessions
    assert settings.max_tasks_per_client < settings.max_tasks
    assert settings.max_streams_per_client < settings.max_streams


def test_the_engine_reads_its_part_only() -> None:
    """The engine's part (`BackendSettings`: what `TaskSystem` takes) neither holds nor checks
    the web door's settings: a bad CORS or API key value stops a server, not a script."""
    web_only = {"CORS_ALLOW_ORIGINS": "*", "API_KEYS": "short", "SECRET_KEY": "short", "PORT": "0"}
    engine = BackendSettings.from_env({**web_only, "MAX_TASKS": "7", "TASK_BACKEND": "memory"})
    assert engine.max_tasks == 7 and not hasattr(engine, "cors_allow_origins")
    with pytest.raises(SettingsError, match="CORS_ALLOW_ORIGINS"):
        Settings.from_env({"CORS_ALLOW_ORIGINS": "*"})
    parts = [EngineSettings, BackendSettings, Settings]
    names = [{f.encode_name for f in msgspec.structs.fields(part)} for part in parts]
    assert names[0] < names[1] < names[2]
    assert {"HOST", "SECRET_KEY", "CORS_ALLOW_ORIGINS", "MAX_STREAMS"}.isdisjoint(names[1])
    assert {"TASK_BACKEND", "WORKER_LEASE_MS"}.isdisjoint(names[0]) and "MAX_TASKS" in names[0]


@pytest.mark.parametrize(
    ("url", "extra", "missing"),
    [
        ("redis://127.0.0.1:1/0", "redis", ("redis", "saq")),
        ("postgresql://user@127.0.0.1:1/db", "postgres", ("psycopg", "psycopg_pool", "saq")),
    ],
)
def test_a_backend_without_its_extra_is_refused_in_one_line(
    url: str, extra: str, missing: tuple[str, ...], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """TASK_BACKEND naming Redis or PostgreSQL on an install without that extra (its imports
    made to fail here): ``serve`` and ``worker`` each stop with one line naming the extra to
    install, never a traceback."""
    for name in list(sys.modules):
        if name.partition(".")[0] in missing or name.startswith(
            ("async_tasks.backends.redis", "async_tasks.backends.postgres")
        ):
            monkeypatch.delitem(sys.modules, name)
    for name in missing:
        monkeypatch.setitem(sys.modules, name, None)  # `import name` raises ImportError
    monkeypatch.setenv("SECRET_KEY", "0123456789abcdef0123")
    assert serve(backend=url, port=free_port()) == 2
    assert run_worker(backend=url) == 2
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 2 and "Traceback" not in err, err
    assert all(
        line.startswith("async-tasks: TASK_BACKEND is") and f"pip install 'async-tasks[{extra}]'" in line
        for line in lines
    )
