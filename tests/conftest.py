"""Shared fixtures (owner, other customer, admin) and the service gate.

Tests marked ``pg``/``redis``/``worker``/``chromium`` need real services. Locally they skip when the
service is missing; on CI (``CI`` set) they fail instead, so a missing service can never turn a red
build green.
"""

from __future__ import annotations

import os
import shutil
import socket
from urllib.parse import urlparse

import pytest
from django.conf import settings

from tests import factories

ON_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _reachable(url: str, default_port: int) -> bool:
    parsed = urlparse(url)
    try:
        with socket.create_connection((parsed.hostname or "127.0.0.1", parsed.port or default_port), timeout=1):
            return True
    except OSError:
        return False


def service_missing(marker: str) -> str | None:
    """Why a marked test cannot run here, or None when its service is available."""
    is_pg = settings.DATABASES["default"]["ENGINE"].endswith("postgresql")
    if marker in ("pg", "worker") and not is_pg:
        return "PostgreSQL is not the test database (set DATABASE_URL)"
    if marker in ("redis", "worker") and not _reachable(settings.TEST_REDIS_URL, 6379):
        return f"Redis is not reachable at {settings.TEST_REDIS_URL}"
    if marker == "chromium" and not shutil.which("chromium"):
        return "Chromium is not installed (apt-get install chromium)"
    return None


def pytest_runtest_setup(item: pytest.Item) -> None:
    for marker in ("pg", "redis", "worker", "chromium"):
        if item.get_closest_marker(marker):
            reason = service_missing(marker)
            if reason:
                if ON_CI:
                    pytest.fail(f"required service missing on CI: {reason}", pytrace=False)
                pytest.skip(reason)


@pytest.fixture(autouse=True)
def _clear_cache():
    from django.core.cache import cache

    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def owner(db):
    return factories.UserFactory(email="owner@example.com")


@pytest.fixture
def other(db):
    return factories.UserFactory(email="other@example.com")


@pytest.fixture
def admin_user(db):
    return factories.UserFactory(email="admin@example.com", is_staff=True, is_superuser=True)


@pytest.fixture
def paper(owner):
    """The owner's paper account and its raw webhook key: ``(account, raw_key)``."""
    return factories.paper_account(owner=owner)


@pytest.fixture
def owner_client(client, owner):
    client.force_login(owner)
    return client


@pytest.fixture
def binance(settings):
    """The local Binance protocol server, with every Binance URL setting pointed at it."""
    from tests.protocol.binance_server import BinanceServer, point_settings_at

    with BinanceServer() as server:
        point_settings_at(settings, server)
        settings.BINANCE_RETRY_MAX_SLEEP = 0.01
        yield server


@pytest.fixture
def kite_pointed(settings):
    """A local Kite server with TradeFlow's Kite calls pointed at it (the connect page and API tests)."""
    from tests.protocol.kite_server import KiteServer

    with KiteServer() as server:
        settings.KITE_API_ROOT = server.url
        yield server


@pytest.fixture
def live_enabled(settings):
    settings.LIVE_TRADING_ENABLED = True
