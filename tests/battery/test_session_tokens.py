"""Session tokens under attack: tampered, truncated, signed with another key or salt,
expired, from the future, or plain junk, in the header or the cookie, never resolve to
the session they imitate and never cause a 5xx. Key rotation accepts old tokens and
signs new ones with the new key. The session cookie is HttpOnly, SameSite and Path=/.
"""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from itsdangerous import BadSignature, TimestampSigner, URLSafeTimedSerializer

from async_tasks.settings import Settings
from async_tasks.web.app import create_app
from async_tasks.web.middleware import COOKIE_NAME, TOKEN_HEADER
from async_tasks.web.sessions import _SALT
from tests.battery.harness import PortalApp, blocking_portal, running
from tests.helpers import SECRET, TEST_EXECUTORS, TEST_HOST

pytestmark = pytest.mark.battery

API = "/api/v1"
OLD = "old-secret-key-0123456789abcdef"
NEW = "new-secret-key-0123456789abcdef"
MAX_AGE = 3600
EXAMPLES = settings(
    max_examples=int(os.environ.get("BATTERY_EXAMPLES", "25")),
    deadline=None,
    derandomize="BATTERY_EXAMPLES" not in os.environ,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
#: What an HTTP header value can carry (latin-1, no control characters).
HEADER_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=600)
B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def serializer(secret: str | list[str], *, at: float | None = None, salt: str = _SALT) -> URLSafeTimedSerializer:
    """The app's token format, optionally stamped at another time than now."""
    if at is None:
        return URLSafeTimedSerializer(secret, salt=salt)
    stamp = int(at)

    class StampedSigner(TimestampSigner):
        def get_timestamp(self) -> int:
            return stamp

    return URLSafeTimedSerializer(secret, salt=salt, signer=StampedSigner)


class Victim:
    """A token session holding one task, and an app that resolves tokens only (no IP mapping)."""

    def __init__(self, api: PortalApp) -> None:
        self.api = api
        response = api.request("POST", f"{API}/session")
        self.token: str = response.json()["token"]
        self.key: str = response.json()["sessionKey"]
        created = api.request("POST", f"{API}/tasks", headers={TOKEN_HEADER: self.token}, json={"executor": "script"})
        self.task_id: str = created.json()["task"]["id"]

    def resolve(self, token: str, *, cookie: bool = False) -> str:
        """The session a request carrying `token` lands in; it never sees the victim's task."""
        value = token.encode("latin-1")  # sent as raw bytes, as a client could
        headers = {"Cookie": f"{COOKIE_NAME}=".encode() + value} if cookie else {TOKEN_HEADER: value}
        response = self.api.request("GET", f"{API}/session", headers=headers)
        assert response.status_code == 200, response.text
        key: str = response.json()["sessionKey"]
        if key != self.key:
            peek = self.api.request("GET", f"{API}/tasks/{self.task_id}", headers=headers)
            assert peek.status_code == 404
        return key


@pytest.fixture(scope="module")
def victim() -> Iterator[Victim]:
    app = create_app(
        Settings(
            secret_key=SECRET,
            task_create_rate=0.0,
            auto_map_session_by_ip=False,
            # Each refused token is a new session, all from one address: no per-minute budget.
            new_sessions_per_client_per_minute=0,
            session_max_age=MAX_AGE,
            allowed_hosts=TEST_HOST,
        ),
        TEST_EXECUTORS,
        environ={},
    )
    with blocking_portal() as portal, running(app, portal) as api:
        yield Victim(api)


def decoded(token: str) -> list[bytes]:
    return [base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)) for part in token.split(".")]


def test_the_genuine_token_resolves(victim: Victim) -> None:
    assert victim.resolve(victim.token) == victim.key
    assert victim.resolve(victim.token, cookie=True) == victim.key


@EXAMPLES
@given(data=st.data(), cookie=st.booleans())
def test_a_tampered_token_is_refused(victim: Victim, data: st.DataObject, cookie: bool) -> None:
    token = victim.token
    index = data.draw(st.integers(0, len(token) - 1))
    char = data.draw(st.sampled_from(B64 + ".").filter(lambda c: c != token[index]))
    tampered = token[:index] + char + token[index + 1 :]
    if victim.resolve(tampered, cookie=cookie) == victim.key:
        # Only a different spelling of the same bytes (unused low bits of the last base64
        # character) may still verify; nothing signed changed.
        assert decoded(tampered) == decoded(token)


@EXAMPLES
@given(data=st.data(), cookie=st.booleans())
def test_a_truncated_or_extended_token_is_refused(victim: Victim, data: st.DataObject, cookie: bool) -> None:
    token = victim.token
    cut = token[: data.draw(st.integers(0, len(token) - 1))]
    assert victim.resolve(cut, cookie=cookie) != victim.key
    extended = token + data.draw(st.text(B64 + ".", min_size=1, max_size=8))
    assert victim.resolve(extended, cookie=cookie) != victim.key


@pytest.mark.parametrize(
    "forge",
    [
        pytest.param(lambda key: serializer("another-secret-key-0123456789").dumps(key), id="other-key"),
        pytest.param(lambda key: serializer(SECRET, salt="another-salt").dumps(key), id="other-salt"),
        pytest.param(lambda key: serializer(SECRET, at=time.time() - MAX_AGE - 5).dumps(key), id="expired"),
        pytest.param(lambda key: serializer(SECRET, at=time.time() + 3600).dumps(key), id="from-the-future"),
        pytest.param(lambda key: URLSafeTimedSerializer(SECRET).dumps(key), id="no-salt"),
        pytest.param(lambda key: key, id="bare-key"),
        pytest.param(lambda key: serializer(SECRET).dumps("ip_" + key), id="signed-non-session-key"),
        pytest.param(lambda key: serializer(SECRET).dumps([key]), id="signed-list"),
    ],
)
@pytest.mark.parametrize("cookie", [False, True], ids=["header", "cookie"])
def test_a_forged_token_is_refused(victim: Victim, forge: Any, cookie: bool) -> None:
    assert victim.resolve(forge(victim.key), cookie=cookie) != victim.key


def test_a_token_just_inside_its_max_age_is_accepted(victim: Victim) -> None:
    token = serializer(SECRET, at=time.time() - MAX_AGE + 60).dumps(victim.key)
    assert victim.resolve(token) == victim.key


@EXAMPLES
@given(junk=HEADER_TEXT, cookie=st.booleans())
def test_junk_never_resolves_and_never_breaks_the_server(victim: Victim, junk: str, cookie: bool) -> None:
    assert victim.resolve(junk, cookie=cookie) != victim.key


@EXAMPLES
@given(
    raw=st.binary(max_size=300)
    .map(lambda b: b.decode("latin-1"))
    .filter(lambda s: "\r" not in s and "\n" not in s and "\0" not in s)
)
def test_a_raw_cookie_header_never_breaks_the_server(victim: Victim, raw: str) -> None:
    response = victim.api.request("GET", f"{API}/tasks", headers={"Cookie": raw.encode("latin-1")})
    assert response.status_code == 200
    assert victim.task_id not in response.text


# -- key rotation and cookies -----------------------------------------------------------------


@pytest.fixture(scope="module")
def rotated() -> Iterator[PortalApp]:
    app = create_app(
        Settings(
            secret_key=f"{NEW},{OLD}",
            task_create_rate=0.0,
            auto_map_session_by_ip=False,
            allowed_hosts=TEST_HOST,
            new_sessions_per_client_per_minute=0,
        ),
        TEST_EXECUTORS,
        environ={},
    )
    with blocking_portal() as portal, running(app, portal) as api:
        yield api


def test_rotation_accepts_tokens_of_the_old_key(rotated: PortalApp) -> None:
    token = serializer(OLD).dumps("s_signed-before-rotation")
    response = rotated.request("GET", f"{API}/session", headers={TOKEN_HEADER: token})
    assert response.json()["sessionKey"] == "s_signed-before-rotation"
    assert TOKEN_HEADER.lower() not in response.headers  # nothing new was issued


def test_rotation_signs_new_tokens_with_the_new_key(rotated: PortalApp) -> None:
    issued = rotated.request("POST", f"{API}/session").json()
    assert serializer(NEW).loads(issued["token"]) == issued["sessionKey"]
    with pytest.raises(BadSignature):
        serializer(OLD).loads(issued["token"])
    auto = rotated.request("GET", f"{API}/session").headers[TOKEN_HEADER]  # issued on first contact
    assert serializer(NEW).loads(auto).startswith("s_")


def cookie_attributes(set_cookie: str) -> dict[str, str]:
    name_value, *attributes = (part.strip() for part in set_cookie.split(";"))
    assert name_value.startswith(f"{COOKIE_NAME}=")
    return {k.lower(): v for k, _, v in (a.partition("=") for a in attributes)}


@pytest.mark.parametrize("how", ["POST /session", "first contact"])
def test_the_session_cookie_is_httponly_samesite_and_site_wide(rotated: PortalApp, how: str) -> None:
    response = (
        rotated.request("POST", f"{API}/session") if how == "POST /session" else rotated.request("GET", f"{API}/tasks")
    )
    attributes = cookie_attributes(response.headers["set-cookie"])
    assert "httponly" in attributes
    assert attributes["samesite"].lower() in {"lax", "strict"}
    assert attributes["path"] == "/"
    assert "secure" not in attributes  # SESSION_COOKIE_SECURE is off by default (plain http demos)


def test_the_cookie_is_secure_when_configured() -> None:
    app = create_app(
        Settings(secret_key=SECRET, session_cookie_secure=True, allowed_hosts=TEST_HOST), TEST_EXECUTORS, environ={}
    )
    with blocking_portal() as portal, running(app, portal) as api:
        attributes = cookie_attributes(api.request("POST", f"{API}/session").headers["set-cookie"])
    assert "secure" in attributes and "httponly" in attributes
