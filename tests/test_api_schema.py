"""Schemathesis against the API's own OpenAPI schema, in-process (Django's WSGI app; no server, no network).

Every operation gets generated requests, authenticated with a token of a seeded operator who owns an account, an
open position, an order, a signal and a bot subscription, so the requests reach real code (not only the 401
path). Checks: no 5xx, and every answer (status, content type, body) is what the schema says.
Kept to a few examples per operation so the whole file runs in well under a minute.
"""

from __future__ import annotations

from decimal import Decimal

import pytest
import schemathesis
from django.core.management import call_command
from django.core.signals import request_finished, request_started
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from accounts.tokens import api_token_create
from bots.services import bot_create, subscription_create
from brokers.adapters.paper import quote_set
from brokers.models import Execution, Order, Position
from tests import factories
from webhooks.models import Signal

schema = schemathesis.openapi.from_wsgi("/api/v1/schema/", get_wsgi_application())
# The coverage phase (every boundary value the schema defines) in positive mode only: its negative half doubles the
# run time, and the fuzzing phase below sends invalid input too.
schema.config.phases.coverage.generation.modes = [GenerationMode.POSITIVE]
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture
def in_process(settings):
    """Call the WSGI app the way Django's test client does: without closing the test's database connection at the
    end of each request (that would break the test transaction), and with a 500's exception raised, not hidden."""
    settings.DEBUG_PROPAGATE_EXCEPTIONS = True
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


@pytest.fixture
def seeded_token(db, in_process, binance):  # binance: connecting a Binance account checks the key there
    user = factories.UserFactory(email="schemathesis@example.com", is_staff=True)
    account, _ = factories.paper_account(owner=user, label="Fuzzed paper")
    quote_set(broker="paper", symbol="BTCUSDT", price=Decimal("100"))
    signal = Signal.objects.create(account=account, format=Signal.Format.UNIFY, body_hash="x", payload={"a": 1},
                                   intent={"action": "entry"}, received_at=account.created_at)
    execution = Execution.objects.create(signal=signal, account=account, status=Execution.Status.REJECTED,
                                         reason_code="max_open_positions", reason="limit", intent={"action": "entry"})
    Order.objects.create(execution=execution, account=account, leg="main", client_order_id="TF-fuzz", symbol="BTCUSDT",
                         side="buy", qty=Decimal("1"), status=Order.Status.FILLED)
    Position.objects.create(account=account, symbol="BTCUSDT", side="long", qty=Decimal("1"), avg_price=Decimal("100"))
    bot, _ = bot_create(name="Fuzzed bot", broker="binance", market_type="futures")
    subscription_create(user=user, bot=bot, account=account)
    return api_token_create(owner=user, name="schemathesis").raw


def test_schema_lists_the_api():
    operations = list(schema.get_all_operations())
    paths = {op.ok().path for op in operations}
    assert "/api/v1/accounts/" in paths and "/api/v1/risk/config/" in paths
    assert not any("webhook/master" in p or p.startswith("/api/v1/webhooks") for p in paths)  # not DRF
    assert len(operations) >= 35


def test_schema_generates_without_warnings(tmp_path):
    """A drf-spectacular warning means a guessed type (a string where a number goes, a missing response): the
    schema, and everything generated from it, would be wrong without failing anywhere else."""
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(tmp_path / "schema.yaml"))
    assert "/api/v1/positions/{id}/close/" in (tmp_path / "schema.yaml").read_text()


@schema.parametrize()
@settings(max_examples=8, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.filter_too_much])
def test_api_conforms_to_its_schema(case, seeded_token):
    case.call_and_validate(headers={"Authorization": f"Token {seeded_token}"}, checks=CHECKS)
