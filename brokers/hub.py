"""Price ticks to the sockets of one server process: received once per process, written to each socket directly.

A tick reaches every open dashboard at once, so it is the one message whose cost is multiplied by the sockets.
Delivered the usual Channels way (every socket's consumer in a group), each socket's consumer received the tick
on its own channel, decoded the whole shard's message and woke its own task: measured with 500 sockets on two
cores, that was about half of a server process's CPU per tick. Here one hub per process (per event loop) holds one
channel in every price group, decodes each message once, and writes each user's text to that user's sockets.

Customers get only their own rows (``publish_prices`` keys each user's text by user id); staff get the admins'
text with every row. Execution events still go through each consumer's own groups (``brokers.live``).
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections import deque

from brokers.live import PRICE_ADMINS_GROUP, PRICE_SHARDS, prices_group

log = logging.getLogger(__name__)
BACKLOG = 30  # ticks kept for a socket that cannot take them yet (a minute at the default period); older are dropped
REJOIN_SECONDS = 3600  # Redis core layer groups expire (a day by default): the hub joins again every hour

_hubs: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # event loop → {id(layer): PriceHub}


def price_groups() -> list[str]:
    return [prices_group(n) for n in range(PRICE_SHARDS)] + [PRICE_ADMINS_GROUP]


class PriceHub:
    def __init__(self, layer):
        self.layer = layer
        self.customers: dict[str, set] = {}  # user id (text, as publish_prices keys it) → that user's consumers
        self.staff: set = set()
        self.backlog: dict = {}  # consumer → ticks waiting for its socket to drain (see _send_now)
        self.channel: str | None = None
        self.task: asyncio.Task | None = None
        self.ready = asyncio.Event()

    @classmethod
    async def for_layer(cls, layer) -> PriceHub:
        """This event loop's hub for ``layer``, started on first use."""
        per_loop = _hubs.setdefault(asyncio.get_running_loop(), {})
        hub = per_loop.get(id(layer))
        if hub is None or hub.layer is not layer or hub.task.done():
            hub = per_loop[id(layer)] = cls(layer)
            hub.task = asyncio.get_running_loop().create_task(hub.run(), name="price-hub")
        await hub.ready.wait()
        return hub

    def add(self, consumer, *, user_key: str, staff: bool) -> None:
        if staff:
            self.staff.add(consumer)
        else:
            self.customers.setdefault(user_key, set()).add(consumer)

    def discard(self, consumer, *, user_key: str) -> None:
        self.staff.discard(consumer)
        if (queued := self.backlog.get(consumer)) is not None:
            queued.clear()
        sockets = self.customers.get(user_key)
        if sockets is not None:
            sockets.discard(consumer)
            if not sockets:
                del self.customers[user_key]

    async def join(self) -> None:
        for group in price_groups():
            await self.layer.group_add(group, self.channel)

    async def run(self) -> None:
        """Receive ticks for as long as the process lives. A channel-layer failure (Redis restarting) is logged and
        the hub starts over on a new channel after a second, keeping its sockets: a blip costs a few ticks, not
        every dashboard of the process until a restart."""
        rejoin = asyncio.get_running_loop().create_task(self._rejoin())
        try:
            while True:
                try:
                    if self.channel is None:  # kept across a restart: the layer resubscribes it when back
                        self.channel = await self.layer.new_channel("prices-hub.")
                    await self.join()
                    self.ready.set()
                    while True:
                        message = await self.layer.receive(self.channel)
                        try:
                            await self.deliver(message)
                        except Exception:  # noqa: BLE001 - one bad tick must not stop the next ones
                            log.exception("price tick not delivered")
                except asyncio.CancelledError:
                    raise
                except Exception:  # noqa: BLE001
                    log.warning("price hub lost its channel layer; starting over in 1 s", exc_info=True)
                    self.ready.set()  # connects go on meanwhile: their sockets are served once it is back
                    await asyncio.sleep(1)
        finally:
            rejoin.cancel()

    async def _rejoin(self) -> None:
        while True:
            await asyncio.sleep(REJOIN_SECONDS)
            try:
                await self.join()
            except Exception:  # noqa: BLE001
                log.warning("price hub could not rejoin its groups", exc_info=True)

    async def deliver(self, message: dict) -> None:
        if message.get("admins"):
            text = message["text"]
            targets = [(consumer, text) for consumer in list(self.staff)]
        else:
            customers = self.customers
            targets = [(consumer, text) for key, text in message["by_user"].items()
                       for consumer in list(customers.get(key, ()))]
        for consumer, text in targets:
            queued = self.backlog.get(consumer)
            if queued is not None:  # this socket is still draining an earlier tick: after it, in order
                queued.append(text)
            else:
                self._send_now(consumer, text)

    def _send_now(self, consumer, text: str) -> None:
        """Write one socket's tick without letting a slow socket hold up the others.

        The server's ``send`` only waits when that socket's buffer is full (a phone on a bad network): normally it
        completes without suspending, so it is run here step by step, as an eager task would, and no task is
        made. If it does suspend, the rest of it, and the ticks for that socket that arrive meanwhile, go on in a
        task of their own while this loop serves the next socket."""
        coro = consumer.send(text_data=text)
        try:
            waiting = coro.send(None)
        except StopIteration:
            return
        except Exception:  # noqa: BLE001 - a socket closing meanwhile; its disconnect removes it
            log.debug("price tick not sent to a closing socket", exc_info=True)
            return
        self.backlog[consumer] = deque(maxlen=BACKLOG)
        asyncio.get_running_loop().create_task(self._drain(consumer, coro, waiting))

    async def _drain(self, consumer, coro, waiting) -> None:
        try:
            while True:  # the suspended send, to its end: what the event loop would do for a task
                try:
                    await (waiting if waiting is not None else asyncio.sleep(0))
                except Exception:  # noqa: BLE001,S110 - the send sees the failure when resumed, and raises it
                    pass
                try:
                    waiting = coro.send(None)
                except StopIteration:
                    break
            queued = self.backlog.get(consumer)
            while queued:
                await consumer.send(text_data=queued.popleft())
        except Exception:  # noqa: BLE001
            log.debug("price ticks not sent to a slow socket", exc_info=True)
        finally:
            self.backlog.pop(consumer, None)
