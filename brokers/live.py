"""Push executions and positions to the customer's and the admins' websocket groups."""

from __future__ import annotations

import logging

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

log = logging.getLogger(__name__)
ADMINS_GROUP = "live.admins"


def user_group(user_id: int) -> str:
    return f"live.user.{user_id}"


def execution_event(execution) -> dict:
    return {
        "kind": "execution",
        "id": execution.pk,
        "account_id": execution.account_id,
        "signal_id": str(execution.signal_id) if execution.signal_id else None,
        "status": execution.status,
        "reason_code": execution.reason_code,
        "reason": execution.reason,
        "symbol": execution.intent.get("symbol", ""),
        "latency_ms": str(execution.latency_ms) if execution.latency_ms is not None else None,
    }


def publish(user_id: int, event: dict) -> None:
    """Best effort: a dashboard that misses an event reloads its snapshot; trading must not wait on it."""
    layer = get_channel_layer()
    if layer is None:
        return
    message = {"type": "live.event", "event": event}
    try:
        async_to_sync(layer.group_send)(user_group(user_id), message)
        async_to_sync(layer.group_send)(ADMINS_GROUP, message)
    except Exception:  # noqa: BLE001 - the event is informational; the database holds the truth
        log.warning("could not publish live event %s", event.get("kind"), exc_info=True)


def publish_execution(execution) -> None:
    publish(execution.account.owner_id, execution_event(execution))
