"""Who is calling the customer API (``/api/v1/``), what they may do, and how fast.

* ``TokenAuthentication``: ``Authorization: Token tf_pat_...`` (personal API tokens, ``accounts/tokens.py``).
  Listed first, so an anonymous caller gets 401 with ``WWW-Authenticate: Token`` rather than 403.
* ``TokenScope``: a read-only token may only read.
* ``ApiRateThrottle``: one bucket per token (per user for browser sessions, per address for anonymous calls).
"""

from __future__ import annotations

from django.conf import settings
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions, permissions, throttling

from accounts.models import ApiToken
from accounts.tokens import TokenRefused, api_token_authenticate

KEYWORD = "Token"


class TokenAuthentication(authentication.BaseAuthentication):
    def authenticate(self, request):
        header = authentication.get_authorization_header(request).split()
        if not header or header[0].lower() != KEYWORD.lower().encode():
            return None  # not ours: the session (or nobody) authenticates
        if len(header) != 2:
            raise exceptions.AuthenticationFailed(
                "Malformed Authorization header: send `Authorization: Token <token>` (one space, no quotes)",
                code="invalid_token")
        try:
            raw = header[1].decode()
        except UnicodeDecodeError as exc:
            raise exceptions.AuthenticationFailed("The token contains characters a TradeFlow token never has",
                                                  code="invalid_token") from exc
        try:
            token = api_token_authenticate(raw)
        except TokenRefused as exc:
            raise exceptions.AuthenticationFailed(exc.message, code=exc.code) from exc
        return token.owner, token

    def authenticate_header(self, request) -> str:
        return KEYWORD


class TokenAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = "tradeflow.api_auth.TokenAuthentication"
    name = "tokenAuth"

    def get_security_definition(self, auto_schema):
        return {"type": "apiKey", "in": "header", "name": "Authorization",
                "description": "A personal API token from Settings → API tokens, as `Token tf_pat_...`"}


class TokenScope(permissions.BasePermission):
    message = "This API token is read-only: create a read/write token on the API tokens page to make changes"
    code = "read_only_token"

    def has_permission(self, request, view) -> bool:
        token = request.auth
        if isinstance(token, ApiToken) and token.read_only:
            return request.method in permissions.SAFE_METHODS
        return True


class IsStaff(permissions.BasePermission):
    """Operator endpoints (bots, kill switch). Customers get 403 with a message saying so."""

    message = "Only TradeFlow operators (staff) may do this"
    code = "staff_only"

    def has_permission(self, request, view) -> bool:
        return bool(request.user and request.user.is_authenticated and request.user.is_staff)


# For a view's ``permission_classes``: the defaults (signed in, token scope) plus staff.
STAFF_ONLY = [permissions.IsAuthenticated, TokenScope, IsStaff]


class ApiRateThrottle(throttling.SimpleRateThrottle):
    scope = "api"

    def get_rate(self) -> str | None:
        # Read at request time, not import time (DRF's default), so ``API_RATE_LIMIT`` and test overrides apply.
        return settings.REST_FRAMEWORK.get("DEFAULT_THROTTLE_RATES", {}).get(self.scope)

    def get_cache_key(self, request, view) -> str:
        if isinstance(request.auth, ApiToken):
            ident = f"token{request.auth.pk}"
        elif request.user and request.user.is_authenticated:
            ident = f"user{request.user.pk}"
        else:
            ident = f"ip{self.get_ident(request)}"
        return self.cache_format % {"scope": self.scope, "ident": ident}
