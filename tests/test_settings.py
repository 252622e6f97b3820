"""Settings from the environment: seed defaults, and one clear line for a bad value."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from async_tasks.errors import SettingsError
from async_tasks.settings import Settings


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
