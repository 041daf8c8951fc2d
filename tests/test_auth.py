"""Sign-up with email verification, login by email, logout, password reset and TOTP MFA (allauth)."""

import re

import pytest
from django.core import mail

from accounts.models import TradingSettings, User

pytestmark = pytest.mark.django_db


def _link(body: str) -> str:
    return re.search(r"https?://[^/\s]+(/\S+)", body).group(1)


def test_signup_requires_email_verification_then_logs_in(client, settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    response = client.post("/accounts/signup/", {"email": "New@Example.com", "password1": "a-long-pass-phrase-9",
                                                 "password2": "a-long-pass-phrase-9"})
    assert response.status_code == 302
    user = User.objects.get(email="new@example.com")
    assert TradingSettings.objects.filter(user=user, hedge_pct=30, default_lots=1).exists()
    # Not verified yet: the dashboard is out of reach.
    assert client.get("/").status_code == 302
    assert len(mail.outbox) == 1 and "new@example.com" in mail.outbox[0].to
    confirm = client.post(_link(mail.outbox[0].body))
    assert confirm.status_code == 302
    dashboard = client.get("/")
    assert dashboard.status_code == 200 and b"Dashboard" in dashboard.content


def test_login_by_email_and_logout(client, owner):
    page = client.get("/accounts/login/")
    assert page.status_code == 200 and b"TradeFlow" in page.content  # rendered inside the product layout
    bad = client.post("/accounts/login/", {"login": "owner@example.com", "password": "wrong"})
    assert bad.status_code == 200 and b"not correct" in bad.content
    ok = client.post("/accounts/login/", {"login": "owner@example.com", "password": "correct-horse-battery"})
    assert ok.status_code == 302 and client.get("/").status_code == 200
    client.post("/accounts/logout/")
    assert client.get("/").status_code == 302


def test_password_reset_sends_a_working_link(client, owner, settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    client.post("/accounts/password/reset/", {"email": "owner@example.com"})
    assert len(mail.outbox) == 1
    form_url = client.get(_link(mail.outbox[0].body), follow=True).redirect_chain[-1][0]
    done = client.post(form_url, {"password1": "another-long-pass-7", "password2": "another-long-pass-7"})
    assert done.status_code == 302
    assert client.login(email="owner@example.com", password="another-long-pass-7")


def test_totp_can_be_activated_and_is_then_required_at_login(client, owner):
    import time

    from allauth.mfa.totp.internal.auth import hotp_value

    client.force_login(owner)
    # Security pages ask for the password again before changing MFA.
    client.post("/accounts/reauthenticate/", {"password": "correct-horse-battery"})
    page = client.get("/accounts/2fa/totp/activate/")
    assert page.status_code == 200
    secret = page.context["form"].secret
    code = hotp_value(secret, int(time.time()) // 30)
    activated = client.post("/accounts/2fa/totp/activate/", {"code": f"{code:06d}"})
    assert activated.status_code == 302
    client.logout()
    step = client.post("/accounts/login/", {"login": "owner@example.com", "password": "correct-horse-battery"})
    assert step.status_code == 302 and "/2fa/authenticate" in step["Location"]
    assert client.get("/").status_code == 302  # password alone is not enough
