"""Which session a caller belongs to: signed session tokens and keyed IP hashes.

1. a signed token (itsdangerous) from the ``X-Session-Token`` header or the
   session cookie; a forged, truncated or expired token counts as absent;
2. else, with AUTO_MAP_SESSION_BY_IP, ``ip_`` + a keyed hash of the client IP (the
   raw IP is never stored or shown);
3. else a new session: its token is returned in the ``X-Session-Token`` response
   header and set as an HttpOnly, SameSite cookie.

With ENABLE_SESSION_ISOLATION=false every request shares the session ``shared``.
Reading the token from a request is the web layer's job (`async_tasks.web.middleware`).

A stream ticket is a short-lived (STREAM_TICKET_TTL seconds) signed stand-in for a
session, for the clients that cannot send headers (``EventSource``, browser
WebSockets): it goes in a URL, so it must not be the long-lived token. Each ticket
carries a nonce of its own, so the web door can let it open one stream only.

A client (`async_tasks.clients`) is kept as a keyed hash of its address
(`SessionResolver.client_key`), like IP sessions.

A share token (`ShareTokens`) reads one task of one session, for SHARE_LINK_TTL
seconds: it goes in a link handed to someone else, so it stands for neither the
session nor any other task.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from typing import NamedTuple

from itsdangerous import BadData, SignatureExpired, TimestampSigner, URLSafeTimedSerializer

from async_tasks.clients import client_address
from async_tasks.clock import SYSTEM_CLOCK, Clock
from async_tasks.settings import Settings

logger = logging.getLogger("async_tasks.sessions")

SHARED_SESSION = "shared"
_SALT = "async-tasks.session"
_TICKET_SALT = "async-tasks.stream-ticket"
_SHARE_SALT = "async-tasks.share"
_MAX_TOKEN_LENGTH = 512
_IP_CACHE_SIZE = 65_536
#: Verified session tokens remembered (the oldest is forgotten first).
_TOKEN_CACHE_SIZE = 4096


class SessionResolver:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        keys = settings.secret_keys
        if not keys:
            keys = [secrets.token_urlsafe(32)]
            logger.warning("SECRET_KEY is not set: using a random key, so session tokens end with this process")
        #: The signing keys, newest first (SECRET_KEY, or one random key per process).
        self.keys = keys
        # itsdangerous signs with the last key and accepts all of them.
        self._serializer = URLSafeTimedSerializer(list(reversed(keys)), salt=_SALT)
        self._tickets = URLSafeTimedSerializer(list(reversed(keys)), salt=_TICKET_SALT)
        self._ip_key = hmac.new(keys[0].encode(), b"async-tasks.ip", hashlib.sha256).digest()
        # The keyed hash costs more than the rest of session resolution; clients repeat.
        self._ip_keys: dict[str, str] = {}
        self._client_keys: dict[str | None, str] = {}
        # Verifying a token (HMAC, base64, JSON) costs a fifth of a status request, and a
        # client sends the same token with every request: an accepted token is verified
        # once and remembered with the time it was signed, so it still expires on time.
        self._verified: dict[str, tuple[str, int]] = {}

    def new_session(self) -> tuple[str, str]:
        """A fresh (session key, token)."""
        key = "s_" + secrets.token_urlsafe(16)
        return key, self.token_for(key)

    def token_for(self, key: str) -> str:
        return self._serializer.dumps(key)

    def key_from_token(self, token: str | None) -> str | None:
        if not token or len(token) > _MAX_TOKEN_LENGTH:
            return None
        max_age = self.settings.session_max_age
        verified = self._verified.get(token)
        if verified is not None:
            key, signed_at = verified
            if 0 <= int(time.time()) - signed_at <= max_age:
                return key
            del self._verified[token]
            return None
        try:
            key, signed = self._serializer.loads(token, max_age=max_age, return_timestamp=True)
        except (BadData, ValueError, TypeError, UnicodeError):
            return None
        if not (isinstance(key, str) and key.startswith("s_")):
            return None
        if len(self._verified) >= _TOKEN_CACHE_SIZE:
            del self._verified[next(iter(self._verified))]
        self._verified[token] = (key, int(signed.timestamp()))
        return key

    def ticket_for(self, key: str) -> str:
        """A stream ticket for session `key` (valid STREAM_TICKET_TTL seconds), with a nonce
        of its own (`Ticket.nonce`)."""
        return self._tickets.dumps([key, secrets.token_urlsafe(12)])

    def read_ticket(self, ticket: str) -> Ticket | None:
        """The session a ticket stands for and its nonce, or None if forged, truncated or
        expired."""
        if not ticket or len(ticket) > _MAX_TOKEN_LENGTH:
            return None
        try:
            value = self._tickets.loads(ticket, max_age=self.settings.stream_ticket_ttl)
        except (BadData, ValueError, TypeError, UnicodeError):
            return None
        if not isinstance(value, list) or len(value) != 2 or not all(isinstance(part, str) and part for part in value):
            return None
        return Ticket(value[0], value[1])

    def key_for_ip(self, ip: str) -> str:
        key = self._ip_keys.get(ip)
        if key is None:
            if len(self._ip_keys) >= _IP_CACHE_SIZE:
                self._ip_keys.clear()  # bounded: a flood of addresses only costs recomputation
            digest = hmac.new(self._ip_key, ip.encode(), hashlib.sha256).hexdigest()
            key = self._ip_keys[ip] = "ip_" + digest[:24]
        return key

    def client_key(self, host: str | None) -> str:
        """The client a request from `host` counts as: ``c_`` + a keyed hash of its address
        (`async_tasks.clients.client_address`: IPv6 by its /64)."""
        key = self._client_keys.get(host)
        if key is None:
            if len(self._client_keys) >= _IP_CACHE_SIZE:
                self._client_keys.clear()
            address = client_address(host)
            digest = hmac.new(self._ip_key, b"client:" + address.encode(), hashlib.sha256).hexdigest()
            key = self._client_keys[host] = "c_" + digest[:24]
        return key

    def resolve(self, token: str | None, client_ip: str | None) -> tuple[str, str | None]:
        """(session key, token to hand out or None)."""
        if not self.settings.enable_session_isolation:
            return SHARED_SESSION, None
        key = self.key_from_token(token)
        if key is not None:
            return key, None
        if self.settings.auto_map_session_by_ip and client_ip:
            return self.key_for_ip(client_ip), None
        return self.new_session()


class Ticket(NamedTuple):
    """What a stream ticket stands for: a session, and the nonce that makes it one of a kind."""

    session_key: str
    nonce: str


class Share(NamedTuple):
    """What a share token stands for: one task of one session, until `expires_at` (epoch ms)."""

    session_key: str
    task_id: str
    expires_at: int


class ShareTokens:
    """Signed, expiring tokens that each read one task (share links).

    A token carries the session key and the task id, signed (itsdangerous, with its own
    salt: it is no session token and no stream ticket) and stamped with the time on
    `clock`, so tests expire it by moving a fake clock. It is not encrypted: the session
    key in it can be read, which names the session but cannot act in it (that needs a
    token signed with SECRET_KEY for the session itself).
    """

    def __init__(self, keys: list[str], ttl: int, clock: Clock = SYSTEM_CLOCK) -> None:
        """`keys`: newest first (`SessionResolver.keys`); `ttl`: seconds a token stays valid."""
        self.ttl = ttl
        self.clock = clock
        self._serializer = URLSafeTimedSerializer(list(reversed(keys)), salt=_SHARE_SALT, signer=_signer_on(clock))

    def issue(self, session_key: str, task_id: str) -> tuple[str, int]:
        """A token for the task, and when it expires (epoch ms)."""
        signed_at = self.clock.now_ms() // 1000  # what the signer stamps
        return self._serializer.dumps([session_key, task_id]), (signed_at + self.ttl) * 1000

    def read(self, token: str) -> Share:
        """The task a token names. Raises `ShareExpired` when it is past its time, and
        `ShareInvalid` when it is forged, truncated or not a share token."""
        if not token or len(token) > _MAX_TOKEN_LENGTH:
            raise ShareInvalid()
        try:
            value, signed = self._serializer.loads(token, max_age=self.ttl, return_timestamp=True)
        except SignatureExpired:
            raise ShareExpired() from None
        except (BadData, ValueError, TypeError, UnicodeError):
            raise ShareInvalid() from None
        if not isinstance(value, list) or len(value) != 2 or not all(isinstance(part, str) and part for part in value):
            raise ShareInvalid()
        return Share(value[0], value[1], (int(signed.timestamp()) + self.ttl) * 1000)


class ShareInvalid(Exception):
    """A share token that was not signed here (or was changed)."""


class ShareExpired(ShareInvalid):
    """A share token past SHARE_LINK_TTL."""


def _signer_on(clock: Clock) -> type[TimestampSigner]:
    """A `TimestampSigner` that reads the time from `clock` (when signing and when checking age)."""

    class ClockSigner(TimestampSigner):
        def get_timestamp(self) -> int:
            return clock.now_ms() // 1000

    return ClockSigner
