"""One adapter per broker behind the small interface in ``base.py``. Only this package imports SDKs."""

from __future__ import annotations

from brokers.adapters.base import BrokerAdapter


def get_adapter(account) -> BrokerAdapter:
    """The adapter that trades ``account``: paper-mode accounts of every broker stay on the paper broker."""
    if account.is_paper:
        from brokers.adapters.paper import PaperAdapter

        return PaperAdapter(account)
    from brokers.models import Broker

    if account.broker == Broker.KITE:
        from brokers.adapters.kite import KiteAdapter

        return KiteAdapter(account)
    if account.broker == Broker.BINANCE:
        from brokers.adapters.binance import BinanceAdapter

        return BinanceAdapter(account)
    raise NotImplementedError(f"The {account.get_broker_display()} adapter is not available yet")


__all__ = ["BrokerAdapter", "get_adapter"]
