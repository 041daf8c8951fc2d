"""Live updates over ``ws/live/``: who may connect, who sees what, and what the price feed pushes.

Sockets go through ``tradeflow.asgi.application`` (session cookie, origin check, auth middleware) on the
in-memory channel layer. Each scenario runs on its own event loop; the layer is flushed first so no queue
of an earlier test's loop is reused. ``channels.testing.WebsocketCommunicator`` cannot be imported without
daphne (its package imports the live-server test case), so ``Socket`` below is the same few methods.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
from decimal import Decimal
from unittest import mock

import pytest
from asgiref.sync import async_to_sync
from asgiref.testing import ApplicationCommunicator
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.test import Client

from brokers.adapters.paper import quote_set
from brokers.models import Position, Quote
from brokers.services.positions import position_apply_fill
from brokers.services.prices import SIMULATED_STEP, paper_quotes_walk, prices_mark
from tests import factories
from tradeflow.asgi import application

pytestmark = pytest.mark.django_db(transaction=True)
D = Decimal
WAIT = 2  # seconds an expected event may take
QUIET = 0.3  # seconds a socket must stay silent to count as "received nothing"


def run(scenario):
    async def flushed():
        await get_channel_layer().flush()
        return await scenario()

    return async_to_sync(flushed)()


def session_cookie(user) -> str:
    client = Client()
    client.force_login(user)
    return client.cookies["sessionid"].value


class Socket(ApplicationCommunicator):
    """A websocket client speaking ASGI to the application, like ``channels.testing.WebsocketCommunicator``."""

    def __init__(self, headers: list[tuple[bytes, bytes]]):
        super().__init__(application, {"type": "websocket", "path": "/ws/live/", "query_string": b"",
                                        "headers": headers, "subprotocols": []})

    # The consumer's database calls must keep the test's connection (channels.testing does the same).
    async def send_input(self, message):
        with mock.patch("channels.db.close_old_connections", lambda: None):
            return await super().send_input(message)

    async def receive_output(self, timeout=1):
        with mock.patch("channels.db.close_old_connections", lambda: None):
            return await super().receive_output(timeout)

    async def connect(self) -> tuple[bool, int | None]:
        await self.send_input({"type": "websocket.connect"})
        response = await self.receive_output(WAIT)
        if response["type"] == "websocket.close":
            return False, response.get("code", 1000)
        assert response["type"] == "websocket.accept"
        return True, None

    async def send_to(self, *, text_data: str) -> None:
        await self.send_input({"type": "websocket.receive", "text": text_data})

    async def send_json_to(self, data) -> None:
        await self.send_to(text_data=json.dumps(data))

    async def receive_json_from(self, timeout: float = WAIT):
        response = await self.receive_output(timeout)
        assert response["type"] == "websocket.send", response
        return json.loads(response["text"])

    async def disconnect(self) -> None:
        await self.send_input({"type": "websocket.disconnect", "code": 1000})
        await self.wait(1)


def socket_for(cookie: str | None) -> Socket:
    headers = [(b"host", b"testserver"), (b"origin", b"http://testserver")]
    if cookie:
        headers.append((b"cookie", f"sessionid={cookie}".encode()))
    return Socket(headers)


async def connected(cookie: str) -> tuple[Socket, dict]:
    socket = socket_for(cookie)
    ok, _ = await socket.connect()
    assert ok
    return socket, await socket.receive_json_from(timeout=WAIT)


def fill(account, symbol: str, side: str, qty: str, price: str):
    return position_apply_fill(account=account, symbol=symbol, side=side, qty=D(qty), price=D(price))


def test_an_anonymous_socket_is_refused():
    async def scenario():
        socket = socket_for(None)
        ok, code = await socket.connect()
        assert not ok and code == 4401

    run(scenario)


def test_a_forged_session_cookie_is_refused():
    async def scenario():
        ok, code = await socket_for("not-a-session").connect()
        assert not ok and code == 4401

    run(scenario)


def test_the_snapshot_holds_only_the_users_own_open_positions(owner, other):
    mine, _ = factories.paper_account(owner=owner)
    theirs, _ = factories.paper_account(owner=other)
    fill(mine, "NIFTYBEES", "buy", "10", "250")
    fill(theirs, "BANKBEES", "buy", "5", "500")
    closed, _ = fill(mine, "GOLDBEES", "buy", "1", "60")
    fill(mine, "GOLDBEES", "sell", "1", "61")
    cookie = session_cookie(owner)

    async def scenario():
        socket, snapshot = await connected(cookie)
        assert snapshot["kind"] == "snapshot"
        assert [(p["symbol"], p["qty"], p["status"]) for p in snapshot["positions"]] == [
            ("NIFTYBEES", "10", "open")]
        assert closed.pk not in [p["id"] for p in snapshot["positions"]]
        await socket.send_json_to({"action": "snapshot"})  # the client asks again after a reconnect
        assert (await socket.receive_json_from(timeout=WAIT))["positions"] == snapshot["positions"]
        await socket.send_to(text_data="{not json")  # ignored, the socket stays usable
        await socket.send_json_to({"action": "snapshot"})
        assert (await socket.receive_json_from(timeout=WAIT))["kind"] == "snapshot"
        await socket.disconnect()

    run(scenario)


def test_a_fill_reaches_its_owner_and_the_admins_never_another_customer(owner, other, admin_user):
    account, _ = factories.paper_account(owner=owner)
    factories.paper_account(owner=other)
    cookies = [session_cookie(u) for u in (owner, other, admin_user)]

    async def scenario():
        (a, _), (b, _), (admin, _) = [await connected(c) for c in cookies]
        position, _ = await database_sync_to_async(fill)(account, "NIFTYBEES", "buy", "10", "250")
        for socket in (a, admin):
            event = await socket.receive_json_from(timeout=WAIT)
            assert event["kind"] == "position" and event["id"] == position.pk
            assert (event["symbol"], event["side"], event["qty"], event["status"]) == (
                "NIFTYBEES", "long", "10", "open")
        assert await b.receive_nothing(timeout=QUIET)
        assert await a.receive_nothing(timeout=0.05)  # exactly one event per fill
        for socket in (a, b, admin):
            await socket.disconnect()

    run(scenario)


def test_an_execution_reaches_its_owner_and_the_admins_with_what_their_tables_show(owner, other, admin_user):
    """The dashboard's "recent signals" row and the admin page's per-bot counter come from this one event."""
    from brokers.live import publish_execution
    from brokers.models import Execution

    account, _ = factories.paper_account(owner=owner, label="Swing")
    factories.paper_account(owner=other)
    execution = Execution.objects.create(account=account, status=Execution.Status.REJECTED,
                                         reason="Daily loss limit reached", intent={
                                             "symbol": "NIFTYBEES", "bot": {"id": 7, "subscription": 3}})
    cookies = [session_cookie(u) for u in (owner, other, admin_user)]

    async def scenario():
        (a, _), (b, _), (admin, _) = [await connected(c) for c in cookies]
        await database_sync_to_async(publish_execution)(execution)
        for socket in (a, admin):
            event = await socket.receive_json_from(timeout=WAIT)
            assert (event["kind"], event["id"], event["account"], event["symbol"], event["status"], event["bot_id"]) \
                == ("execution", execution.pk, "Swing", "NIFTYBEES", "rejected", 7)
            assert event["reason"] == "Daily loss limit reached" and event["created_at"]
            assert event["owner"] == owner.email  # the admin page names the customer
        assert await b.receive_nothing(timeout=QUIET)
        for socket in (a, b, admin):
            await socket.disconnect()

    run(scenario)


def test_a_fill_rolled_back_is_never_published(owner):
    from django.db import transaction

    account, _ = factories.paper_account(owner=owner)
    cookie = session_cookie(owner)

    def failed_fill():
        with pytest.raises(RuntimeError), transaction.atomic():
            fill(account, "NIFTYBEES", "buy", "10", "250")
            raise RuntimeError("the order's booking failed after the fill")

    async def scenario():
        socket, _ = await connected(cookie)
        await database_sync_to_async(failed_fill)()
        assert await socket.receive_nothing(timeout=QUIET)
        await socket.disconnect()

    run(scenario)


def test_closing_a_position_publishes_it_closed_with_its_realized_pnl(owner):
    account, _ = factories.paper_account(owner=owner)
    position, _ = fill(account, "NIFTYBEES", "buy", "10", "250")
    cookie = session_cookie(owner)

    async def scenario():
        socket, snapshot = await connected(cookie)
        assert [p["id"] for p in snapshot["positions"]] == [position.pk]
        await database_sync_to_async(fill)(account, "NIFTYBEES", "sell", "10", "262.5")
        event = await socket.receive_json_from(timeout=WAIT)
        assert (event["kind"], event["id"], event["status"]) == ("position", position.pk, "closed")
        assert D(event["realized_pnl"]) == D("125") and D(event["unrealized_pnl"]) == 0
        await socket.disconnect()

    run(scenario)


def test_a_reversal_publishes_the_closed_row_and_the_new_one(owner):
    account, _ = factories.paper_account(owner=owner)
    old, _ = fill(account, "NIFTYBEES", "buy", "10", "250")
    cookie = session_cookie(owner)

    async def scenario():
        socket, _ = await connected(cookie)
        new, _ = await database_sync_to_async(fill)(account, "NIFTYBEES", "sell", "15", "240")
        closed = await socket.receive_json_from(timeout=WAIT)
        opened = await socket.receive_json_from(timeout=WAIT)
        assert (closed["id"], closed["status"]) == (old.pk, "closed")
        assert (opened["id"], opened["status"], opened["side"], opened["qty"]) == (new.pk, "open", "short",
                                                                                   "5")
        await socket.disconnect()

    run(scenario)


def test_the_price_feed_pushes_new_pnl_to_the_owner_only(owner, other, admin_user):
    mine, _ = factories.paper_account(owner=owner)
    theirs, _ = factories.paper_account(owner=other)
    long_, _ = fill(mine, "NIFTYBEES", "buy", "10", "250")
    short, _ = fill(mine, "BANKBEES", "sell", "2", "500")
    fill(theirs, "GOLDBEES", "buy", "1", "60")  # its quote does not move: no event for the other customer
    cookies = [session_cookie(u) for u in (owner, other, admin_user)]

    def move_and_mark():
        quote_set(broker="paper", symbol="NIFTYBEES", price=D("251.5"))
        quote_set(broker="paper", symbol="BANKBEES", price=D("490"))
        return prices_mark()

    async def scenario():
        (a, _), (b, _), (admin, _) = [await connected(c) for c in cookies]
        result = await database_sync_to_async(move_and_mark)()
        assert sorted(result.changed) == sorted([long_.pk, short.pk]) and result.checked == 3
        event = await a.receive_json_from(timeout=WAIT)
        assert event["kind"] == "prices" and event["ts"] > 0
        got = {p["id"]: (D(p["last_price"]), D(p["unrealized_pnl"])) for p in event["positions"]}
        assert got == {long_.pk: (D("251.5"), D("15")), short.pk: (D("490"), D("20"))}
        assert {p["id"] for p in (await admin.receive_json_from(timeout=WAIT))["positions"]} == set(got)
        assert await b.receive_nothing(timeout=QUIET)
        # Stored too, so a page loaded now shows the same figures; an unchanged round sends nothing.
        assert await database_sync_to_async(lambda: Position.objects.get(pk=long_.pk).last_price)() == D("251.5")
        assert (await database_sync_to_async(prices_mark)()).changed == []
        assert await a.receive_nothing(timeout=QUIET)
        for socket in (a, b, admin):
            await socket.disconnect()

    run(scenario)


def test_every_tab_of_a_customer_gets_the_tick_and_a_closed_tab_stops_nothing(owner, other):
    """Ticks are written per server process to each of the user's sockets (``brokers.hub``)."""
    mine, _ = factories.paper_account(owner=owner)
    theirs, _ = factories.paper_account(owner=other)
    position, _ = fill(mine, "NIFTYBEES", "buy", "10", "250")
    fill(theirs, "BANKBEES", "buy", "1", "500")
    cookie, other_cookie = session_cookie(owner), session_cookie(other)

    def move(symbol, price):
        quote_set(broker="paper", symbol=symbol, price=D(price))
        return prices_mark()

    async def scenario():
        (tab1, _), (tab2, _), (b, _) = [await connected(c) for c in (cookie, cookie, other_cookie)]
        await database_sync_to_async(move)("NIFTYBEES", "251")
        for tab in (tab1, tab2):
            event = await tab.receive_json_from(timeout=WAIT)
            assert [(p["id"], D(p["unrealized_pnl"])) for p in event["positions"]] == [(position.pk, D("10"))]
        assert await b.receive_nothing(timeout=QUIET)
        await tab1.disconnect()
        await database_sync_to_async(move)("NIFTYBEES", "252")
        event = await tab2.receive_json_from(timeout=WAIT)
        assert D(event["positions"][0]["unrealized_pnl"]) == D("20")
        await database_sync_to_async(move)("BANKBEES", "510")  # the other customer's tick still reaches them only
        assert D((await b.receive_json_from(timeout=WAIT))["positions"][0]["unrealized_pnl"]) == D("10")
        assert await tab2.receive_nothing(timeout=QUIET)
        for socket in (tab2, b):
            await socket.disconnect()

    run(scenario)


def test_the_price_feed_reads_prices_once_per_round_for_all_paper_accounts(owner, other,
                                                                             django_assert_max_num_queries,
                                                                             monkeypatch):
    from brokers.adapters.paper import PaperAdapter

    for n, user in enumerate((owner, other, owner)):
        account, _ = factories.paper_account(owner=user, label=f"Paper {n}")
        for symbol in ("NIFTYBEES", "BANKBEES", "GOLDBEES"):
            fill(account, symbol, "buy", "1", "100")
    calls = []
    real = PaperAdapter.last_prices
    monkeypatch.setattr(PaperAdapter, "last_prices", lambda self, symbols: calls.append(symbols) or real(self, symbols))
    for symbol in ("NIFTYBEES", "BANKBEES", "GOLDBEES"):
        quote_set(broker="paper", symbol=symbol, price=D("101"))
    with django_assert_max_num_queries(6):  # positions, one price read, one bulk UPDATE (+ BEGIN/COMMIT, and on
        # PostgreSQL the SET LOCAL that spares display figures the disk flush)
        assert len(prices_mark().changed) == 9
    assert calls == [["BANKBEES", "GOLDBEES", "NIFTYBEES"]]


def test_the_simulated_feed_moves_paper_quotes_of_open_positions_within_bounds(owner):
    account, _ = factories.paper_account(owner=owner)
    fill(account, "NIFTYBEES", "buy", "10", "250")
    quote_set(broker="paper", symbol="NIFTYBEES", price=D("250"))
    quote_set(broker="paper", symbol="UNHELD", price=D("100"))  # nobody holds it: it stays put
    rng = random.Random(7)
    price = D("250")
    moved = 0
    for _ in range(50):
        new = paper_quotes_walk(rng=rng)["NIFTYBEES"]
        assert abs(new - price) <= price * SIMULATED_STEP
        moved += new != price
        price = new
    assert moved >= 40  # it visibly moves, tick after tick
    assert Quote.objects.get(symbol="NIFTYBEES").price == price
    assert Quote.objects.get(symbol="UNHELD").price == D("100")
    prices_mark()
    assert Position.objects.get(symbol="NIFTYBEES").last_price == price


def test_in_the_embedded_demo_the_first_socket_starts_a_feed_that_moves_paper_pnl(owner, settings):
    from brokers.services import prices

    settings.SIMULATED_FEED, settings.PRICE_FEED_SECONDS = True, 0.05
    account, _ = factories.paper_account(owner=owner)
    position, _ = fill(account, "NIFTYBEES", "buy", "10", "250")
    quote_set(broker="paper", symbol="NIFTYBEES", price=D("250"))
    cookie = session_cookie(owner)

    async def scenario():
        socket, _ = await connected(cookie)
        try:
            event = await socket.receive_json_from(timeout=WAIT)
            assert event["kind"] == "prices" and [p["id"] for p in event["positions"]] == [position.pk]
            moved = D(event["positions"][0]["last_price"])
            assert moved != D("250") and abs(moved - D("250")) <= D("250") * prices.SIMULATED_STEP
            assert not prices.simulated_feed_start(asyncio.get_running_loop())  # one feed per process
        finally:
            await database_sync_to_async(prices.simulated_feed_stop)()
            await socket.disconnect()

    run(scenario)
    assert not prices._feed_thread.is_alive()


@pytest.mark.redis
def test_over_redis_pub_sub_a_tick_reaches_its_owner_only(owner, other, settings):
    """The production path: the publisher's own loop thread, Redis pub/sub, the consumer on the server's loop."""
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
                                           # Pub/sub ignores the Redis db: a prefix of its own keeps
                                           # other runs' ticks (a benchmark) off these sockets.
                                           "CONFIG": {"hosts": [settings.TEST_REDIS_URL],
                                                      "prefix": f"test{os.getpid()}"}}}
    mine, _ = factories.paper_account(owner=owner)
    position, _ = fill(mine, "NIFTYBEES", "buy", "10", "250")
    quote_set(broker="paper", symbol="NIFTYBEES", price=D("252"))
    cookies = [session_cookie(u) for u in (owner, other)]

    async def scenario():
        (a, _), (b, _) = [await connected(c) for c in cookies]
        await database_sync_to_async(prices_mark)()
        event = await a.receive_json_from(timeout=WAIT)
        assert event["kind"] == "prices" and event["positions"][0]["id"] == position.pk
        assert D(event["positions"][0]["unrealized_pnl"]) == D("20")
        assert await b.receive_nothing(timeout=QUIET)
        for socket in (a, b):
            await socket.disconnect()

    async_to_sync(scenario)()  # nothing to flush: a fresh layer


def test_the_price_hub_survives_a_channel_layer_failure():
    """A Redis blip while the hub waits for a tick: it logs, starts over, and the same sockets get the next tick."""
    from channels.layers import InMemoryChannelLayer

    from brokers.hub import PriceHub
    from brokers.live import PRICE_ADMINS_GROUP, prices_group

    class Flaky(InMemoryChannelLayer):
        failures = 1

        async def receive(self, channel):
            if self.failures:
                self.failures -= 1
                raise ConnectionError("Redis went away")
            return await super().receive(channel)

    class Tab:
        def __init__(self):
            self.got = asyncio.Queue()

        async def send(self, *, text_data):
            await self.got.put(text_data)

    async def scenario():
        layer = Flaky()
        hub = await PriceHub.for_layer(layer)
        customer, staff = Tab(), Tab()
        hub.add(customer, user_key="7", staff=False)
        hub.add(staff, user_key="1", staff=True)
        for _ in range(100):  # the failed receive, the second's pause, the hub back on its channel
            await asyncio.sleep(0.05)
            if not layer.failures and hub.channel in layer.groups.get(prices_group(7), {}):
                break
        await asyncio.sleep(1.2)
        await layer.group_send(prices_group(7), {"type": "live.prices", "by_user": {"7": "mine", "8": "theirs"}})
        await layer.group_send(PRICE_ADMINS_GROUP, {"type": "live.prices", "admins": True, "text": "all"})
        assert await asyncio.wait_for(customer.got.get(), WAIT) == "mine"
        assert await asyncio.wait_for(staff.got.get(), WAIT) == "all"
        assert customer.got.empty() and not hub.task.done()
        hub.task.cancel()

    async_to_sync(scenario)()


def test_a_socket_that_cannot_take_a_tick_holds_up_no_other_and_gets_its_ticks_in_order():
    """A phone on a bad network: its send waits for the buffer to drain. The other sockets of the process still
    get the tick at once; the slow one gets every tick, in order, once it drains."""
    from channels.layers import InMemoryChannelLayer

    from brokers.hub import PriceHub

    class Tab:
        def __init__(self, gate=None):
            self.got, self.gate = [], gate

        async def send(self, *, text_data):
            if self.gate is not None:
                await self.gate.wait()
            self.got.append(text_data)

    async def scenario():
        hub = PriceHub(InMemoryChannelLayer())
        gate = asyncio.Event()
        slow, fast = Tab(gate), Tab()
        hub.add(slow, user_key="1", staff=False)
        hub.add(fast, user_key="2", staff=False)
        await hub.deliver({"by_user": {"1": "slow-1", "2": "fast-1"}})
        await hub.deliver({"by_user": {"1": "slow-2", "2": "fast-2"}})
        assert fast.got == ["fast-1", "fast-2"] and slow.got == []  # delivered without waiting for the slow one
        gate.set()
        for _ in range(50):
            await asyncio.sleep(0.01)
        assert slow.got == ["slow-1", "slow-2"] and hub.backlog == {}
        await hub.deliver({"by_user": {"1": "slow-3"}})
        assert slow.got[-1] == "slow-3"  # drained: straight through again

    async_to_sync(scenario)()


def test_a_socket_whose_consumer_failed_is_not_kept_by_the_price_hub(owner, monkeypatch):
    """A database blip in the snapshot ends the consumer without ``disconnect``: the hub must not keep it (and try
    to send it every tick for as long as the process lives)."""
    from brokers import hub as hub_module
    from brokers.consumers import LiveConsumer

    cookie = session_cookie(owner)

    async def broken_snapshot(self):
        raise RuntimeError("database went away")

    async def scenario():
        good, _ = await connected(cookie)
        monkeypatch.setattr(LiveConsumer, "send_snapshot", broken_snapshot)
        bad = socket_for(cookie)
        assert (await bad.connect())[0]  # accepted; then the snapshot fails and the consumer ends
        with pytest.raises(RuntimeError):
            await bad.receive_output(WAIT)
        hubs = list(hub_module._hubs[asyncio.get_running_loop()].values())
        assert [len(sockets) for hub in hubs for sockets in hub.customers.values()] == [1]  # the good one only
        await good.disconnect()
        assert all(not hub.customers for hub in hubs)

    run(scenario)


def test_events_of_one_commit_are_published_together_and_a_rolled_back_savepoints_never(monkeypatch):
    from django.db import transaction

    from brokers import live

    sent = []
    monkeypatch.setattr(live, "publish_many", lambda events: sent.append(list(events)))
    with transaction.atomic():
        live.publish_on_commit([(1, {"kind": "position", "n": 1})])
        with pytest.raises(RuntimeError), transaction.atomic():  # a savepoint that rolls back
            live.publish_on_commit([(1, {"kind": "position", "n": 2})])
            raise RuntimeError("booking failed")
        live.publish_on_commit([(1, {"kind": "execution", "n": 3})])
        assert sent == []  # nothing before the commit
    assert sent == [[(1, {"kind": "position", "n": 1}), (1, {"kind": "execution", "n": 3})]]  # one hand-off

    with pytest.raises(RuntimeError), transaction.atomic():
        live.publish_on_commit([(1, {"kind": "position", "n": 4})])
        raise RuntimeError("the whole transaction rolled back")
    live.publish_on_commit([(1, {"kind": "position", "n": 5})])  # autocommit: at once, alone
    assert sent[1:] == [[(1, {"kind": "position", "n": 5})]]


@pytest.mark.redis
def test_over_redis_pub_sub_a_fill_reaches_its_owner_only_in_one_round_trip(owner, other, settings):
    """Events are published straight to Redis (``live._publish_direct``: the layer's own serialization on its group
    channel, pipelined), and the consumer on the server's loop receives them as from ``group_send``."""
    from brokers import live

    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
                                           "CONFIG": {"hosts": [settings.TEST_REDIS_URL],
                                                      "prefix": f"test{os.getpid()}d"}}}
    mine, _ = factories.paper_account(owner=owner)
    cookies = [session_cookie(u) for u in (owner, other)]
    sent = []
    real = live._publish_direct
    live._publish_direct = lambda layer, messages: sent.append(len(messages)) or real(layer, messages)

    async def scenario():
        (a, _), (b, _) = [await connected(c) for c in cookies]
        await database_sync_to_async(fill)(mine, "NIFTYBEES", "buy", "10", "250")
        event = await a.receive_json_from(timeout=WAIT)
        assert (event["kind"], event["symbol"], event["qty"]) == ("position", "NIFTYBEES", "10")
        assert await b.receive_nothing(timeout=QUIET)
        for socket in (a, b):
            await socket.disconnect()

    try:
        async_to_sync(scenario)()
    finally:
        live._publish_direct = real
    assert sent and sent[0] == 2  # the owner's group and the admins', in one pipeline
