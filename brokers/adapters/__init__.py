"""One adapter per broker behind the small interface in ``base.py``. Only this package imports SDKs."""

from __future__ import annotations

from brokers.adapters.base import BrokerAdapter


def get_adapter(account) -> BrokerAdapter:
    if account.is_paper:
        from brokers.adapters.paper import PaperAdapter

        return PaperAdapter(account)
    raise NotImplementedError(f"The {account.get_broker_display()} adapter is not available yet")


__all__ = ["BrokerAdapter", "get_adapter"]
