"""Personal API tokens: the settings page, and what the API does with good, read-only, revoked and expired tokens."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from accounts.models import ApiToken, AuditLog
from accounts.tokens import TOKEN_PREFIX, api_token_create, api_token_revoke, token_hash
from risk.selectors import risk_config_get
from tradeflow.logging import RedactSecretsFilter, redact

pytestmark = pytest.mark.django_db


def auth(raw: str) -> dict:
    return {"HTTP_AUTHORIZATION": f"Token {raw}"}


def assert_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "fields"}
    assert body["error"]["code"] == code, body
    return body["error"]


def test_token_is_stored_hashed_and_shown_once(owner):
    new = api_token_create(owner=owner, name="script")
    assert new.raw.startswith(TOKEN_PREFIX) and len(new.raw) > 40
    row = ApiToken.objects.get(pk=new.record.pk)
    assert row.key_hash == token_hash(new.raw)
    assert new.raw not in {row.prefix, row.key_hash, row.name}
    assert row.prefix == new.raw[:11]


def test_log_redaction_covers_api_tokens(owner):
    raw = api_token_create(owner=owner, name="script").raw
    assert raw[11:] not in redact(f"GET /api/v1/accounts/?token={raw} 401")
    record = logging.LogRecord("x", logging.WARNING, __file__, 1, "Authorization: Token %s", (raw,), None)
    RedactSecretsFilter().filter(record)
    assert raw not in record.getMessage() and raw[:9] in record.getMessage()


def test_token_authenticates_and_updates_last_used_at_most_once_a_minute(client, owner, paper):
    new = api_token_create(owner=owner, name="script")
    response = client.get("/api/v1/accounts/", **auth(new.raw))
    assert response.status_code == 200
    assert [a["id"] for a in response.json()["results"]] == [paper[0].pk]
    first = ApiToken.objects.get(pk=new.record.pk).last_used
    assert first is not None
    client.get("/api/v1/accounts/", **auth(new.raw))
    assert ApiToken.objects.get(pk=new.record.pk).last_used == first  # within the minute: no write
    ApiToken.objects.filter(pk=new.record.pk).update(last_used=timezone.now() - timedelta(minutes=2))
    client.get("/api/v1/accounts/", **auth(new.raw))
    assert ApiToken.objects.get(pk=new.record.pk).last_used > first


@pytest.mark.parametrize("header", ["", "Token", "Token a b", "Bearer tf_pat_x", "Token tf_pat_unknown"])
def test_missing_or_bad_token_is_401_in_the_shared_format(client, owner, header):
    extra = {"HTTP_AUTHORIZATION": header} if header else {}
    response = client.get("/api/v1/accounts/", **extra)
    error = assert_error(response, 401, "unauthorized" if header in ("", "Bearer tf_pat_x") else "invalid_token")
    assert "Token" in error["message"]
    assert response["WWW-Authenticate"] == "Token"


def test_revoked_token_is_refused(client, owner):
    new = api_token_create(owner=owner, name="script")
    assert client.get("/api/v1/positions/", **auth(new.raw)).status_code == 200
    api_token_revoke(token=new.record, actor=owner)
    error = assert_error(client.get("/api/v1/positions/", **auth(new.raw)), 401, "token_revoked")
    assert "revoked" in error["message"]
    assert AuditLog.objects.filter(user=owner, action="api_token.revoked").exists()


def test_expired_token_is_refused(client, owner):
    new = api_token_create(owner=owner, name="script", expires_at=timezone.now() + timedelta(seconds=30))
    assert client.get("/api/v1/positions/", **auth(new.raw)).status_code == 200
    ApiToken.objects.filter(pk=new.record.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    error = assert_error(client.get("/api/v1/positions/", **auth(new.raw)), 401, "token_expired")
    assert "expired" in error["message"]


def test_token_of_a_deactivated_user_is_refused(client, owner):
    new = api_token_create(owner=owner, name="script")
    owner.is_active = False
    owner.save()
    assert_error(client.get("/api/v1/positions/", **auth(new.raw)), 401, "invalid_token")


@pytest.mark.parametrize("method,url,body", [
    ("post", "/api/v1/accounts/", {"label": "New paper"}),
    ("post", "/api/v1/accounts/{pk}/disable/", None),
    ("post", "/api/v1/accounts/{pk}/regenerate-key/", None),
    ("patch", "/api/v1/risk/config/", {"max_open_positions": 3}),
    ("put", "/api/v1/settings/trading/", {"default_lots": 2}),
    ("post", "/api/v1/emergency-stop/", None),
    ("post", "/api/v1/square-off-all/", None),
])
def test_read_only_token_can_read_but_not_write(client, owner, paper, method, url, body):
    account, raw_key = paper
    token = api_token_create(owner=owner, name="dashboard", read_only=True).raw
    assert client.get("/api/v1/accounts/", **auth(token)).status_code == 200
    assert client.get("/api/v1/risk/config/", **auth(token)).status_code == 200
    response = getattr(client, method)(url.format(pk=account.pk), body, content_type="application/json", **auth(token))
    error = assert_error(response, 403, "read_only_token")
    assert "read-only" in error["message"]
    account.refresh_from_db()
    assert account.enabled and account.webhook_key.key_hash  # nothing changed
    assert owner.broker_accounts.count() == 1
    assert risk_config_get(user=owner).max_open_positions is None
    owner.trading_settings.refresh_from_db()
    assert owner.trading_settings.default_lots == 1


def test_settings_page_creates_shows_once_lists_and_revokes(client, owner):
    client.force_login(owner)
    response = client.post(reverse("api-tokens"), {"name": "backtester", "read_only": "on", "expires_in": "30"})
    assert response.status_code == 302
    page = client.get(reverse("api-tokens")).content.decode()
    token = ApiToken.objects.get(owner=owner)
    raw = page.split('data-testid="raw-token">')[1].split("<")[0]
    assert raw.startswith(token.prefix) and token_hash(raw) == token.key_hash
    assert "only time" in page and "read" in page and "backtester" in page
    again = client.get(reverse("api-tokens")).content.decode()
    assert raw not in again and token.prefix in again  # shown once, then masked
    assert token.expires_at is not None and token.read_only
    assert client.get("/api/v1/accounts/", **auth(raw)).status_code == 200
    assert client.post(reverse("api-token-revoke", args=[token.pk])).status_code == 302
    assert "revoked" in client.get(reverse("api-tokens")).content.decode()
    assert client.get("/api/v1/accounts/", **auth(raw)).status_code == 401


def test_settings_page_cannot_revoke_another_customers_token(client, owner, other):
    theirs = api_token_create(owner=other, name="theirs")
    client.force_login(owner)
    assert client.post(reverse("api-token-revoke", args=[theirs.record.pk])).status_code == 404
    assert client.get(reverse("api-tokens")).content.decode().count("theirs") == 0
    theirs.record.refresh_from_db()
    assert theirs.record.revoked_at is None


def test_nav_links_to_the_tokens_page(client, owner):
    client.force_login(owner)
    assert reverse("api-tokens") in client.get(reverse("trading-settings")).content.decode()


def test_session_auth_works_for_the_browsable_api(client, owner, paper):
    client.force_login(owner)
    assert client.get("/api/v1/accounts/").json()["count"] == 1
    html = client.get("/api/v1/accounts/", HTTP_ACCEPT="text/html")
    assert html.status_code == 200 and b"Paper" in html.content
