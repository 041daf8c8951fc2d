"""Personal API tokens: create (raw token returned once), revoke, list, and authenticate a presented token.

The raw token looks like ``tf_pat_<43 urlsafe chars>``: the ``tf_`` start keeps it covered by the log redaction
in ``tradeflow/logging.py`` (tokens can end up in a pasted URL or an error message), ``pat`` tells a reader what
kind of secret leaked. Only the SHA-256 is stored, so a database dump gives no usable token.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db.models import QuerySet
from django.utils import timezone

from accounts.models import ApiToken, User
from accounts.services import audit_record

TOKEN_PREFIX = "tf_pat_"
PREFIX_SHOWN = len(TOKEN_PREFIX) + 4
LAST_USED_RESOLUTION = timedelta(seconds=60)


def token_hash(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


@dataclass(frozen=True)
class NewToken:
    """A freshly minted token: ``raw`` exists only in this object, never in the database."""

    record: ApiToken
    raw: str


class TokenRefused(Exception):
    """The presented token cannot be used: ``code`` for programs, ``message`` says what to do."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


def api_token_create(*, owner: User, name: str, read_only: bool = False,
                     expires_at: datetime | None = None) -> NewToken:
    raw = TOKEN_PREFIX + secrets.token_urlsafe(32)  # 256 bits
    record = ApiToken.objects.create(owner=owner, name=name, prefix=raw[:PREFIX_SHOWN], key_hash=token_hash(raw),
                                     read_only=read_only, expires_at=expires_at)
    audit_record(user=owner, action="api_token.created", target=str(record),
                 details={"read_only": read_only, "expires_at": expires_at.isoformat() if expires_at else None})
    return NewToken(record=record, raw=raw)


def api_token_revoke(*, token: ApiToken, actor: User | None = None) -> ApiToken:
    """Stop the token working from this commit on. Revoking twice keeps the first time."""
    if token.revoked_at is None:
        token.revoked_at = timezone.now()
        token.save(update_fields=["revoked_at"])
        audit_record(user=token.owner, actor=actor, action="api_token.revoked", target=str(token))
    return token


def api_token_list(*, user: User) -> QuerySet[ApiToken]:
    return ApiToken.objects.filter(owner=user)


def api_token_get(*, user: User, pk: int) -> ApiToken:
    return api_token_list(user=user).get(pk=pk)


def api_token_authenticate(raw: str, *, now: datetime | None = None) -> ApiToken:
    """The usable token for ``raw`` (with its owner loaded), or ``TokenRefused``. Lookup is by SHA-256, so the
    time taken says nothing about how much of a guess was right."""
    token = None
    if raw and len(raw) <= 200:
        token = ApiToken.objects.select_related("owner").filter(key_hash=token_hash(raw)).first()
    if token is None or not token.owner.is_active:
        raise TokenRefused("invalid_token", "Unknown API token: send `Authorization: Token <token>` with a token "
                                            "from Settings → API tokens")
    now = now or timezone.now()
    if token.revoked_at is not None:
        raise TokenRefused("token_revoked", f"This API token ({token.prefix}…) was revoked on "
                                            f"{token.revoked_at:%Y-%m-%d %H:%M} UTC: create a new one")
    if token.expires_at is not None and token.expires_at <= now:
        raise TokenRefused("token_expired", f"This API token ({token.prefix}…) expired on "
                                            f"{token.expires_at:%Y-%m-%d %H:%M} UTC: create a new one")
    if token.last_used is None or now - token.last_used > LAST_USED_RESOLUTION:
        # Coarse on purpose: at most one write a minute per token, not one per request.
        ApiToken.objects.filter(pk=token.pk).update(last_used=now)
        token.last_used = now
    return token
