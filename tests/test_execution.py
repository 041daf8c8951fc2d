"""The exactly-once execution engine: ``execution_run`` and the Celery task around it.

Broker behaviour is scripted with ``FakeBroker`` (an order book keyed by client order id plus a log of
every call) behind ``FakeAdapter``, a real ``BrokerAdapter`` subclass patched in for
``brokers.services.execution.get_adapter``. The options-format and unify tests further down use the
real paper adapter.
"""

from __future__ import annotations

import json
import re
import uuid
from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from brokers.adapters.base import (
    Balance,
    BrokerAdapter,
    BrokerAmbiguous,
    BrokerAuthError,
    BrokerRejected,
    BrokerTransient,
    OrderRequest,
    OrderResult,
)
from brokers.adapters.paper import PaperAdapter, quote_set
from brokers.models import BrokerAccount, Execution, Order, PaperOrder, Position
from brokers.services import execution_create_for_signal, execution_run, position_close
from brokers.services.execution import client_order_id
from brokers.tasks import MAX_RETRIES, execution_run_task
from tests import factories
from webhooks.formats import parse_account_payload
from webhooks.models import Signal

D = Decimal


# --- a scripted broker ---------------------------------------------------------------------------------------


class FakeBroker:
    """What the broker knows (``book``, by client order id) and every call it received, in order.

    ``script`` holds one step per ``place_order`` call: ``None`` accepts; an exception is raised before
    the order is accepted; ``("accept", exc)`` accepts the order and *then* raises (the answer was lost);
    an ``OrderResult`` is returned as is (e.g. a rejection in the response body).
    """

    def __init__(self) -> None:
        self.book: dict[str, OrderResult] = {}
        self.calls: list[tuple] = []
        self.script: list = []
        self.prices: dict[str, Decimal] = {}
        self.duplicates: list[str] = []

    def accept(self, request: OrderRequest) -> OrderResult:
        if request.client_order_id in self.book:
            # A real broker would refuse ("duplicate order") or, worse, place it again.
            self.duplicates.append(request.client_order_id)
            return self.book[request.client_order_id]
        price = request.reference_price or self.prices.get(request.symbol, D("100"))
        result = OrderResult(broker_order_id=f"B{len(self.book) + 1}", status="filled", filled_qty=request.qty,
                             avg_price=price, raw={"clientOrderId": request.client_order_id})
        self.book[request.client_order_id] = result
        return result

    @property
    def placed(self) -> list[tuple]:
        return [c for c in self.calls if c[0] == "place"]

    @property
    def lookups(self) -> list[tuple]:
        return [c for c in self.calls if c[0] == "status"]


class FakeAdapter(BrokerAdapter):
    def __init__(self, account, broker: FakeBroker):
        super().__init__(account)
        self.broker = broker

    def place_order(self, request: OrderRequest) -> OrderResult:
        b = self.broker
        b.calls.append(("place", request.client_order_id, request.side, request.symbol, request.qty))
        step = b.script.pop(0) if b.script else None
        if isinstance(step, tuple):
            b.accept(request)
            raise step[1]
        if isinstance(step, BaseException):
            raise step
        if isinstance(step, OrderResult):
            return step
        return b.accept(request)

    def order_status(self, *, client_order_id: str, symbol: str = "") -> OrderResult | None:
        self.broker.calls.append(("status", client_order_id))
        return self.broker.book.get(client_order_id)

    def cancel_order(self, *, client_order_id: str, broker_order_id: str = "", symbol: str = "") -> None:
        raise BrokerRejected("nothing to cancel")

    def positions(self):
        return []

    def last_prices(self, symbols):
        return {}

    def balance(self) -> Balance:
        return Balance(currency="INR", cash=D("0"), equity=D("0"))

    def validate_credentials(self) -> None:
        return None


@pytest.fixture
def broker(monkeypatch) -> FakeBroker:
    fake = FakeBroker()
    monkeypatch.setattr("brokers.services.execution.get_adapter", lambda account: FakeAdapter(account, fake))
    return fake


@pytest.fixture
def account(paper) -> BrokerAccount:
    return paper[0]


@pytest.fixture
def no_jitter(monkeypatch):
    monkeypatch.setattr("brokers.tasks.random.uniform", lambda a, b: 0.0)


@pytest.fixture
def retry_countdowns(monkeypatch) -> list:
    """The countdown of every retry the task schedules (eager mode runs retries at once, ignoring it)."""
    seen: list = []
    original = execution_run_task.retry

    def spy(*args, **kwargs):
        seen.append(kwargs.get("countdown"))
        return original(*args, **kwargs)

    monkeypatch.setattr(execution_run_task, "retry", spy)
    return seen


# --- helpers -------------------------------------------------------------------------------------------------


def signal_execution(account: BrokerAccount, payload: dict) -> Execution:
    """Store a signal the way the webhook does and create its execution (not run yet)."""
    intent = parse_account_payload(json.loads(json.dumps(payload)), account_broker=account.broker)
    signal = Signal.objects.create(account=account, format=intent["format"], body_hash=uuid.uuid4().hex,
                                   payload=payload, intent=intent, received_at=timezone.now())
    return execution_create_for_signal(signal=signal, account=account)


def unify(side: str, symbol: str = "BTCUSDT", qty: str | None = "1", price: str | None = "100", **extra) -> dict:
    intent = {"side": side, "symbol": symbol, **extra}
    if qty is not None:
        intent["qty"] = qty
    if price is not None:
        intent["price"] = price
    return {"version": "unify.v1", "intent": intent}


def options(action: str = "ENTRY", strike: int = 25000, type_: str = "PE", **extra) -> dict:
    return {"signal": "S1", "strike": strike, "type": type_, "action": action, **extra}


def run(execution: Execution) -> Execution:
    execution_run(execution_id=execution.pk)
    execution.refresh_from_db()
    return execution


def run_task(execution: Execution) -> Execution:
    """Run the Celery task eagerly with its retries, as a worker would (minus the countdown's wait).

    Celery runs an eager retry with ``apply()`` again, which re-raises ``Retry`` when eager errors
    propagate; switching propagation off for the run lets the whole retry chain play out.
    """
    conf = execution_run_task.app.conf
    propagates = conf.task_eager_propagates
    conf.task_eager_propagates = False
    try:
        result = execution_run_task.apply(args=(execution.pk,))
    finally:
        conf.task_eager_propagates = propagates
    if not result.successful():
        raise result.result
    execution.refresh_from_db()
    return execution


def open_positions(account: BrokerAccount) -> list[Position]:
    return list(Position.objects.filter(account=account, status=Position.Status.OPEN))


def assert_terminal(execution: Execution, status: str) -> None:
    assert execution.status == status, (execution.status, execution.reason_code, execution.reason)
    assert execution.finished_at is not None and execution.lease_until is None
    if status != Execution.Status.FILLED:
        assert execution.reason_code and execution.reason


# --- exactly once --------------------------------------------------------------------------------------------


def test_running_the_same_execution_twice_places_one_order_and_books_one_position(account, broker):
    execution = signal_execution(account, unify("buy", qty="2", price="100"))

    first = run(execution)
    again = run(execution)  # a redelivered message
    run_task(execution)  # and once more through the task

    assert_terminal(again, Execution.Status.FILLED)
    assert first.attempts == again.attempts == 1
    assert len(broker.placed) == 1 and not broker.duplicates
    assert Order.objects.filter(execution=execution).count() == 1
    [position] = open_positions(account)
    assert (position.side, position.qty, position.avg_price) == ("long", D("2"), D("100"))


def test_leg_found_sending_whose_order_the_broker_has_is_looked_up_not_resent(account, broker):
    """The worker died after the broker accepted the order but before the answer was stored."""
    execution = signal_execution(account, unify("buy", qty="3", price="100"))
    Execution.objects.filter(pk=execution.pk).update(status=Execution.Status.RUNNING, attempts=1,
                                                     lease_until=timezone.now() - timedelta(seconds=1))
    cid = client_order_id(execution.pk, "main")
    Order.objects.create(execution=execution, account=account, leg="main", client_order_id=cid, symbol="BTCUSDT",
                         side="buy", qty=D("3"), status=Order.Status.SENDING, sent_at=timezone.now())
    broker.book[cid] = OrderResult(broker_order_id="B77", status="filled", filled_qty=D("3"), avg_price=D("101"))

    execution = run(execution)
    run(execution)

    assert_terminal(execution, Execution.Status.FILLED)
    assert broker.placed == [] and broker.lookups == [("status", cid)]
    order = Order.objects.get(execution=execution)
    assert (order.status, order.broker_order_id, order.avg_price) == ("filled", "B77", D("101"))
    [position] = open_positions(account)
    assert (position.qty, position.avg_price) == (D("3"), D("101"))


def test_leg_found_sending_that_never_reached_the_broker_is_sent_once_with_its_client_id(account, broker):
    execution = signal_execution(account, unify("sell", qty="1", price="100"))
    Execution.objects.filter(pk=execution.pk).update(status=Execution.Status.RUNNING,
                                                     lease_until=timezone.now() - timedelta(seconds=1))
    cid = client_order_id(execution.pk, "main")
    Order.objects.create(execution=execution, account=account, leg="main", client_order_id=cid, symbol="BTCUSDT",
                         side="sell", qty=D("1"), status=Order.Status.SENDING)

    assert_terminal(run(execution), Execution.Status.FILLED)

    assert [c[0] for c in broker.calls] == ["status", "place"]
    assert [c[1] for c in broker.placed] == [cid]
    assert open_positions(account)[0].side == "short"


def test_ambiguous_answer_after_the_broker_accepted_is_resolved_by_lookup(account, broker):
    broker.script = [("accept", BrokerAmbiguous("Read timed out (5 s)", code="timeout"))]
    execution = signal_execution(account, unify("buy", qty="1", price="100"))

    execution = run(execution)

    assert_terminal(execution, Execution.Status.FILLED)
    assert [c[0] for c in broker.calls] == ["place", "status"]
    assert len(broker.book) == 1 and not broker.duplicates
    assert Order.objects.get(execution=execution).status == Order.Status.FILLED
    assert len(open_positions(account)) == 1


def test_ambiguous_answer_with_no_order_at_the_broker_is_retried_and_filled_once(account, broker, no_jitter,
                                                                               retry_countdowns):
    broker.script = [BrokerAmbiguous("502 Bad Gateway", code="http_502")]
    execution = signal_execution(account, unify("buy", qty="1", price="100"))

    execution = run_task(execution)

    assert_terminal(execution, Execution.Status.FILLED)
    cid = client_order_id(execution.pk, "main")
    # Looked up after the ambiguous answer, looked up again on the retry, only then sent again.
    assert broker.calls == [("place", cid, "buy", "BTCUSDT", D("1")), ("status", cid), ("status", cid),
                            ("place", cid, "buy", "BTCUSDT", D("1"))]
    assert retry_countdowns == [1]
    assert len(broker.book) == 1
    assert Order.objects.filter(execution=execution).count() == 1
    assert execution.attempts == 2


def test_transient_errors_are_retried_with_backoff_up_to_the_bound_then_fail(account, broker, no_jitter,
                                                                            retry_countdowns):
    broker.script = [BrokerTransient("429 Too many requests: slow down", code="rate_limited")] * 20
    execution = signal_execution(account, unify("buy", qty="1", price="100"))

    execution = run_task(execution)

    assert retry_countdowns == [1, 2, 4, 8, 16]
    assert len(broker.placed) == MAX_RETRIES + 1
    assert {c[1] for c in broker.placed} == {client_order_id(execution.pk, "main")}
    assert_terminal(execution, Execution.Status.FAILED)
    assert execution.reason_code == "rate_limited"
    assert "429 Too many requests: slow down" in execution.reason
    assert broker.book == {} and open_positions(account) == []


def test_transient_error_honours_the_brokers_retry_after(account, broker, no_jitter, retry_countdowns):
    broker.script = [BrokerTransient("Maintenance", code="maintenance", retry_after=7)]
    execution = run_task(signal_execution(account, unify("buy")))

    assert retry_countdowns == [7]
    assert_terminal(execution, Execution.Status.FILLED)
    assert len(broker.book) == 1


@pytest.mark.parametrize(
    "step",
    [
        BrokerRejected("Insufficient margin: required 5000, available 12", code="margin"),
        OrderResult(broker_order_id="B9", status="rejected", reject_reason="Insufficient margin: required 5000"),
    ],
    ids=["exception", "rejected-result"],
)
def test_broker_rejection_fails_the_execution_with_the_brokers_error(account, broker, step, retry_countdowns):
    broker.script = [step]
    execution = run_task(signal_execution(account, unify("buy", qty="1", price="100")))

    assert_terminal(execution, Execution.Status.FAILED)
    assert "Insufficient margin: required 5000" in execution.reason
    assert execution.reason.startswith("Main order (buy 1 BTCUSDT) failed")
    assert retry_countdowns == []  # final answers are not retried
    order = Order.objects.get(execution=execution)
    assert order.status == Order.Status.REJECTED and "Insufficient margin" in order.reject_reason
    assert open_positions(account) == []


def test_auth_error_fails_and_marks_the_account_login_needed(account, broker, retry_countdowns):
    broker.script = [BrokerAuthError("Token is invalid or has expired", code="TokenException")]
    execution = run_task(signal_execution(account, unify("buy")))

    assert_terminal(execution, Execution.Status.FAILED)
    assert execution.reason_code == "TokenException"
    assert "Token is invalid or has expired" in execution.reason
    assert retry_countdowns == []
    account.refresh_from_db()
    assert account.status == BrokerAccount.Status.LOGIN_NEEDED
    assert "Token is invalid or has expired" in account.status_message

    # Until the customer logs in again, new signals are rejected without a broker call.
    later = run_task(signal_execution(account, unify("buy")))
    assert_terminal(later, Execution.Status.REJECTED)
    assert later.reason_code == "login_needed"
    assert len(broker.placed) == 1


def test_hedge_filled_then_main_rejected_says_what_is_already_open(account, broker):
    broker.script = [None, BrokerRejected("Margin exceeds limits", code="margin")]
    execution = run(signal_execution(account, options(lots=3)))

    assert_terminal(execution, Execution.Status.FAILED)
    assert "Margin exceeds limits" in execution.reason
    assert "Already filled: hedge" in execution.reason
    [hedge] = open_positions(account)
    assert (hedge.symbol, hedge.side, hedge.meta["role"]) == ("NIFTY 24800 PE", "long", "hedge")


def test_hedge_cancelled_by_the_broker_means_the_main_leg_is_not_placed(account, broker):
    broker.script = [OrderResult(broker_order_id="B1", status="cancelled", reject_reason="Cancelled by the exchange")]
    execution = run(signal_execution(account, options(lots=3)))

    assert_terminal(execution, Execution.Status.FAILED)
    assert execution.reason_code == "hedge_not_filled"
    assert execution.reason == ("Hedge BUY 65 NIFTY 24800 PE was cancelled by the broker before it filled "
                                "(Cancelled by the exchange); main SELL not placed")
    assert len(broker.placed) == 1
    assert [(o.leg, o.status) for o in Order.objects.filter(execution=execution)] == [("hedge", "cancelled")]
    assert open_positions(account) == []
    assert run(execution).status == Execution.Status.FAILED and len(broker.placed) == 1


def test_an_order_cancelled_without_a_fill_fails_the_execution_and_books_nothing(account, broker):
    broker.script = [OrderResult(broker_order_id="B1", status="cancelled")]
    execution = run(signal_execution(account, unify("buy", qty="1", price="100")))

    assert_terminal(execution, Execution.Status.FAILED)
    assert execution.reason_code == "order_cancelled"
    assert execution.reason == "Main order (buy 1 BTCUSDT) was cancelled by the broker without a fill"
    assert Order.objects.get(execution=execution).status == Order.Status.CANCELLED
    assert open_positions(account) == []


def test_an_exit_whose_main_leg_is_still_open_keeps_the_hedge(account, broker):
    assert run(signal_execution(account, options(lots=3))).status == Execution.Status.FILLED
    broker.script = [OrderResult(broker_order_id="B9", status="open")]

    execution = run(signal_execution(account, options(action="EXIT")))

    assert_terminal(execution, Execution.Status.PLACED)
    assert execution.reason_code == "exit_open"
    assert "NIFTY 24800 PE is kept until it fills" in execution.reason
    assert [c[2] for c in broker.placed] == ["buy", "sell", "buy"]  # hedge, main, then only the main's exit
    assert {p.symbol for p in open_positions(account)} == {"NIFTY 25000 PE", "NIFTY 24800 PE"}


@pytest.mark.parametrize(("broker_name", "mode", "adapter"), [
    ("paper", "paper", "PaperAdapter"), ("kite", "paper", "PaperAdapter"), ("binance", "paper", "PaperAdapter"),
    ("kite", "live", "KiteAdapter"), ("binance", "live", "BinanceAdapter"),
])
def test_live_accounts_get_their_brokers_adapter_and_paper_mode_stays_on_paper(owner, broker_name, mode, adapter):
    from brokers.adapters import get_adapter

    live, _ = factories.paper_account(owner=owner, label="A", broker=broker_name, mode=mode)
    assert type(get_adapter(live)).__name__ == adapter


def test_client_order_ids_are_deterministic_short_alphanumerics(account, broker):
    execution = run(signal_execution(account, options(lots=10)))
    assert_terminal(execution, Execution.Status.FILLED)

    orders = {o.leg: o.client_order_id for o in Order.objects.filter(execution=execution)}
    assert set(orders) == {"hedge", "main"}
    for leg, cid in orders.items():
        assert cid == client_order_id(execution.pk, leg)  # the same on every attempt
        assert re.fullmatch(r"[A-Za-z0-9]{1,20}", cid), cid
    assert len(set(orders.values())) == 2
    assert [c[1] for c in broker.placed] == [orders["hedge"], orders["main"]]
    for leg in ("main", "hedge", "exit_main", "exit_hedge", "close"):
        for execution_id in (1, 99_999, 10**12):
            cid = client_order_id(execution_id, leg)
            assert cid == client_order_id(execution_id, leg)
            assert re.fullmatch(r"[A-Za-z0-9]{1,20}", cid), cid
    assert client_order_id(12, "main") != client_order_id(1, "main") != client_order_id(1, "hedge")


# --- decide() ------------------------------------------------------------------------------------------------


def test_disabled_account_is_rejected_with_the_reason(account, broker):
    execution = signal_execution(account, unify("buy"))
    BrokerAccount.objects.filter(pk=account.pk).update(enabled=False)

    execution = run_task(execution)

    assert_terminal(execution, Execution.Status.REJECTED)
    assert execution.reason_code == "account_disabled"
    assert "is disabled" in execution.reason
    assert broker.calls == [] and not Order.objects.exists()


def test_auto_trade_off_blocks_entries_but_not_exits(account, broker, owner):
    assert run(signal_execution(account, unify("buy", qty="2"))).status == Execution.Status.FILLED
    owner.trading_settings.auto_trade = False
    owner.trading_settings.save()

    entry = run(signal_execution(account, unify("buy", qty="1")))
    assert_terminal(entry, Execution.Status.REJECTED)
    assert entry.reason_code == "auto_trade_off"
    assert "Auto-trade is off" in entry.reason

    exit_ = run(signal_execution(account, unify("close", qty=None, price=None)))
    assert_terminal(exit_, Execution.Status.FILLED)
    assert [(c[2], c[4]) for c in broker.placed] == [("buy", D("2")), ("sell", D("2"))]
    assert open_positions(account) == []


@pytest.mark.parametrize("live_enabled", [False, True])
def test_live_account_needs_the_global_live_switch(owner, broker, settings, live_enabled):
    settings.LIVE_TRADING_ENABLED = live_enabled
    live, _ = factories.paper_account(owner=owner, label="Kite live", broker="kite", mode="live")

    execution = run(signal_execution(live, unify("buy")))

    if live_enabled:
        assert_terminal(execution, Execution.Status.FILLED)
        assert len(broker.placed) == 1
    else:
        assert_terminal(execution, Execution.Status.REJECTED)
        assert execution.reason_code == "live_trading_disabled"
        assert "LIVE_TRADING_ENABLED" in execution.reason
        assert broker.calls == [] and not Order.objects.exists()


# --- the lease -----------------------------------------------------------------------------------------------


def test_running_execution_with_a_live_lease_is_not_claimed_again(account, broker):
    execution = signal_execution(account, unify("buy"))
    lease = timezone.now() + timedelta(seconds=60)
    Execution.objects.filter(pk=execution.pk).update(status=Execution.Status.RUNNING, attempts=1, lease_until=lease)

    returned = execution_run(execution_id=execution.pk)
    run_task(execution)

    execution.refresh_from_db()
    assert returned.status == execution.status == Execution.Status.RUNNING
    assert (execution.attempts, execution.lease_until) == (1, lease)
    assert broker.calls == [] and not Order.objects.exists()


def test_running_execution_with_an_expired_lease_is_resumed(account, broker):
    execution = signal_execution(account, unify("buy"))
    Execution.objects.filter(pk=execution.pk).update(status=Execution.Status.RUNNING, attempts=1,
                                                     lease_until=timezone.now() - timedelta(seconds=1))

    execution = run(execution)

    assert_terminal(execution, Execution.Status.FILLED)
    assert execution.attempts == 2
    assert len(broker.placed) == 1 and len(open_positions(account)) == 1


# --- options format on the paper broker ---------------------------------------------------------------------


class RecordingPaper(PaperAdapter):
    """The real paper broker, with a log of which order it filled when."""

    log: list = []

    def place_order(self, request: OrderRequest) -> OrderResult:
        result = super().place_order(request)
        self.log.append((request.side, request.symbol, request.qty, result.status))
        return result


@pytest.fixture
def paper_log(monkeypatch) -> list:
    log: list = []
    monkeypatch.setattr(RecordingPaper, "log", log)
    monkeypatch.setattr("brokers.services.execution.get_adapter", RecordingPaper)
    return log


def _set_lots(owner, *, hedge_pct="30", offset=200) -> None:
    prefs = owner.trading_settings
    prefs.hedge_pct, prefs.hedge_strike_offset = D(hedge_pct), offset
    prefs.save()


def test_options_entry_buys_the_hedge_and_fills_it_before_selling_the_main_leg(account, owner, paper_log):
    _set_lots(owner)
    quote_set(broker="paper", symbol="NIFTY 25000 PE", price=D("120"))
    quote_set(broker="paper", symbol="NIFTY 24800 PE", price=D("45"))

    execution = run(signal_execution(account, options(lots=10, spot_price=24481)))

    assert_terminal(execution, Execution.Status.FILLED)
    assert paper_log == [("buy", "NIFTY 24800 PE", D("195"), "filled"), ("sell", "NIFTY 25000 PE", D("650"), "filled")]
    hedge, main = Order.objects.filter(execution=execution).order_by("id")
    assert (hedge.leg, hedge.side, hedge.status) == ("hedge", "buy", "filled")
    assert (main.leg, main.side, main.status) == ("main", "sell", "filled")
    assert hedge.filled_at <= main.sent_at
    assert list(PaperOrder.objects.order_by("id").values_list("client_order_id", "side")) == [
        (hedge.client_order_id, "buy"), (main.client_order_id, "sell")]
    positions = {p.symbol: p for p in open_positions(account)}
    assert (positions["NIFTY 25000 PE"].side, positions["NIFTY 25000 PE"].avg_price) == ("short", D("120"))
    assert (positions["NIFTY 24800 PE"].side, positions["NIFTY 24800 PE"].avg_price) == ("long", D("45"))
    assert positions["NIFTY 25000 PE"].meta["hedge_symbol"] == "NIFTY 24800 PE"


@pytest.mark.parametrize(("lots", "pct", "hedge"), [(10, "30", 3), (5, "30", 2), (3, "50", 2), (1, "30", 0),
                                                    (4, "100", 4), (7, "0", 0)])
def test_options_hedge_lots_are_the_hedge_pct_of_the_lots_rounded(account, owner, paper_log, lots, pct, hedge):
    _set_lots(owner, hedge_pct=pct)
    execution = run(signal_execution(account, options(lots=lots, spot_price=24481)))

    assert_terminal(execution, Execution.Status.FILLED)
    legs = {o.leg: o.qty for o in Order.objects.filter(execution=execution)}
    assert legs.get("hedge", D(0)) == hedge * 65
    assert legs["main"] == lots * 65
    assert [row[0] for row in paper_log] == ["buy"] * (hedge > 0) + ["sell"]


def test_paper_options_take_the_lot_size_of_the_listed_unexpired_contract(account, owner, paper_log):
    from brokers.models import Instrument
    from brokers.services.instruments import ist_today

    today = ist_today()
    for days, lot, symbol in ((-1, 75, "OLDPE"), (6, 65, "WEEKPE"), (13, 65, "NEXTPE")):
        for strike in (25000, 24800):
            Instrument.objects.create(broker="kite", exchange="NFO", tradingsymbol=f"{symbol}{strike}", name="NIFTY",
                                      instrument_type="PE", strike=strike, lot_size=lot,
                                      expiry=today + timedelta(days=days))
    Instrument.objects.create(broker="binance", exchange="BINANCE", tradingsymbol="NIFTYX", name="NIFTY",
                              instrument_type="PE", strike=25000, lot_size=1)
    _set_lots(owner)

    run(signal_execution(account, options(lots=10, spot_price=24481)))

    assert [row[2] for row in paper_log] == [D("195"), D("650")]  # 3 and 10 lots of 65, not the expired 75
    main = Position.objects.get(account=account, symbol="NIFTY 25000 PE")
    assert main.meta["expiry"] == (today + timedelta(days=6)).isoformat()


def test_options_lots_come_from_the_users_settings_when_the_alert_has_none(account, owner, paper_log):
    owner.trading_settings.default_lots = 4
    owner.trading_settings.save()
    run(signal_execution(account, options(spot_price=24481)))
    assert [row[2] for row in paper_log] == [D("65"), D("260")]  # round(4 × 30 %) = 1 hedge lot, 4 main lots


@pytest.mark.parametrize(("type_", "hedge_symbol"), [("PE", "NIFTY 24700 PE"), ("CE", "NIFTY 25300 CE")])
def test_options_hedge_strike_is_further_out_of_the_money(account, owner, paper_log, type_, hedge_symbol):
    _set_lots(owner, offset=300)
    run(signal_execution(account, options(type_=type_, lots=10, spot_price=25000)))

    assert [row[:2] for row in paper_log] == [("buy", hedge_symbol), ("sell", f"NIFTY 25000 {type_}")]
    hedge = Position.objects.get(account=account, symbol=hedge_symbol)
    assert hedge.meta["strike"] == str(D(hedge_symbol.split()[1]))


def test_options_exit_buys_back_the_main_leg_first_then_sells_the_hedge_and_books_pnl(account, owner, paper_log):
    _set_lots(owner)
    quote_set(broker="paper", symbol="NIFTY 25000 PE", price=D("100"))
    quote_set(broker="paper", symbol="NIFTY 24800 PE", price=D("40"))
    assert run(signal_execution(account, options(lots=5, spot_price=24481))).status == Execution.Status.FILLED
    quote_set(broker="paper", symbol="NIFTY 25000 PE", price=D("60"))
    quote_set(broker="paper", symbol="NIFTY 24800 PE", price=D("25"))
    paper_log.clear()

    execution = run(signal_execution(account, options(action="Exit")))

    assert_terminal(execution, Execution.Status.FILLED)
    assert paper_log == [("buy", "NIFTY 25000 PE", D("325"), "filled"), ("sell", "NIFTY 24800 PE", D("130"), "filled")]
    assert [o.leg for o in Order.objects.filter(execution=execution).order_by("id")] == ["exit_main", "exit_hedge"]
    assert open_positions(account) == []
    main = Position.objects.get(account=account, symbol="NIFTY 25000 PE")
    hedge = Position.objects.get(account=account, symbol="NIFTY 24800 PE")
    assert main.realized_pnl == 325 * (100 - 60)
    assert hedge.realized_pnl == 130 * (25 - 40)
    account.refresh_from_db()
    assert account.balance == D("1000000") + 13000 - 1950


def test_options_exit_without_a_position_is_rejected(account, paper_log):
    execution = run(signal_execution(account, options(action="EXIT")))
    assert_terminal(execution, Execution.Status.REJECTED)
    assert execution.reason.startswith("No open position in NIFTY 25000 PE")
    assert paper_log == []


# --- unify.v1 on the paper broker ---------------------------------------------------------------------------


def test_unify_close_with_no_position_is_rejected(account, paper_log):
    execution = run(signal_execution(account, unify("close", symbol="ETHUSDT", qty=None, price=None)))

    assert_terminal(execution, Execution.Status.REJECTED)
    assert execution.reason_code == "no_position"
    assert execution.reason == "No open position in ETHUSDT on Paper to close"
    assert paper_log == [] and not Order.objects.exists()


def test_unify_sell_more_than_the_long_reverses_to_a_short_at_the_new_price(account, paper_log):
    run(signal_execution(account, unify("buy", qty="1", price="100")))
    execution = run(signal_execution(account, unify("sell", qty="3", price="110")))

    assert_terminal(execution, Execution.Status.FILLED)
    old = Position.objects.get(account=account, symbol="BTCUSDT", status=Position.Status.CLOSED)
    assert (old.side, old.qty, old.realized_pnl) == ("long", D("1"), D("10"))
    assert old.closed_at is not None
    [new] = open_positions(account)
    assert (new.side, new.qty, new.avg_price) == ("short", D("2"), D("110"))
    account.refresh_from_db()
    assert account.balance == D("1000010")


@pytest.mark.parametrize(
    ("side", "sl", "tp", "expected"),
    [
        ("buy", {"mode": "pct", "value": "1"}, {"mode": "pct", "value": "2"}, ("49500", "51000")),
        ("buy", {"mode": "pct", "value": "1"}, {"mode": "rr", "value": "2"}, ("49500", "51000")),
        ("sell", {"mode": "points", "value": "250"}, {"mode": "rr", "value": "3"}, ("50250", "49250")),
        ("sell", {"mode": "price", "value": "51000"}, {"mode": "points", "value": "500"}, ("51000", "49500")),
        ("buy", {"mode": "points", "value": "100"}, None, ("49900", None)),
    ],
)
def test_unify_sl_and_tp_prices_are_stored_on_the_position(account, paper_log, side, sl, tp, expected):
    extra = {"sl": sl} | ({"tp": tp} if tp else {})
    execution = run(signal_execution(account, unify(side, qty="0.5", price="50000", **extra)))

    assert_terminal(execution, Execution.Status.FILLED)
    [position] = open_positions(account)
    assert position.stop_loss == D(expected[0])
    assert position.take_profit == (D(expected[1]) if expected[1] else None)


def test_manual_close_sells_the_position_at_market_and_books_the_pnl(account, owner, paper_log,
                                                                     django_capture_on_commit_callbacks):
    run(signal_execution(account, unify("buy", symbol="NIFTYBEES", qty="10", price="265.40")))
    position = open_positions(account)[0]
    quote_set(broker="paper", symbol="NIFTYBEES", price=D("270.40"))
    owner.trading_settings.auto_trade = False  # a manual close is never an entry
    owner.trading_settings.save()

    with django_capture_on_commit_callbacks(execute=True):
        execution = position_close(position=position, actor=owner)

    execution.refresh_from_db()
    assert_terminal(execution, Execution.Status.FILLED)
    assert execution.kind == Execution.Kind.CLOSE and execution.intent["actor_id"] == owner.pk
    order = Order.objects.get(execution=execution)
    assert (order.leg, order.side, order.qty, order.avg_price) == ("close", "sell", D("10"), D("270.40"))
    position.refresh_from_db()
    assert (position.status, position.realized_pnl) == ("closed", D("50"))
    account.refresh_from_db()
    assert account.balance == D("1000050")

    with django_capture_on_commit_callbacks(execute=True):
        again = position_close(position=position, actor=owner)
    again.refresh_from_db()
    assert_terminal(again, Execution.Status.REJECTED)
    assert again.reason_code == "no_position"


def test_every_alert_through_the_webhook_ends_in_a_recorded_terminal_state(client, paper,
                                                                          django_capture_on_commit_callbacks):
    account, key = paper
    bodies = [
        unify("buy", qty="1", price="100"),  # filled
        unify("close", symbol="ETHUSDT", qty=None, price=None),  # rejected: nothing to close
        unify("buy", symbol="XRPUSDT", qty="5", price=None),  # failed: the paper broker knows no price
        options(lots=2, spot_price=24481),  # filled (estimated premiums)
        options(action="EXIT", strike=23000, type_="CE"),  # rejected: no such position
    ]
    for body in bodies:
        with django_capture_on_commit_callbacks(execute=True):
            response = client.post(f"/api/v1/webhooks/{key}", data=json.dumps(body), content_type="text/plain")
        assert response.status_code == 202, response.content

    outcomes = [
        (e.status, e.reason_code)
        for e in Execution.objects.filter(account=account).order_by("id")
    ]
    assert outcomes == [
        ("filled", ""), ("rejected", "no_position"), ("failed", "no_price"), ("filled", ""),
        ("rejected", "no_position"),
    ]
    for execution in Execution.objects.all():
        assert_terminal(execution, execution.status)
        assert execution.status in Execution.TERMINAL

