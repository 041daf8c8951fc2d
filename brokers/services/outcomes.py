"""Saving a finished execution, the outcome counters of a bot signal that move with it, and its slippage.

A bot signal counts its subscribers' outcomes (successful / failed / rejected) as they finish. The counters
are F-expression increments in the transaction that saves the execution, after locking its row and reading
the status it had: an execution counts exactly once, and if a late attempt changes a finished execution's
outcome, the count moves from one counter to the other instead of counting twice.
"""

from __future__ import annotations

from django.db import transaction
from django.db.models import F

from brokers.calc import slippage
from brokers.models import Execution

OUTCOME = {Execution.Status.FILLED: "successful", Execution.Status.PLACED: "successful",
           Execution.Status.REJECTED: "rejected", Execution.Status.FAILED: "failed"}


def execution_log_outcome(execution: Execution) -> None:
    """An account alert's rejection or failure also shows on its webhook log row (which said 202)."""
    if execution.status in (Execution.Status.REJECTED, Execution.Status.FAILED):
        from webhooks.models import WebhookLog

        WebhookLog.objects.filter(signal_id=execution.signal_id, error="").update(
            error=f"{execution.get_status_display()}: {execution.reason}"[:2000])


def execution_save_outcome(execution: Execution, fields: list[str]) -> None:
    if not (execution.signal_id and execution.subscription_id):
        execution.save(update_fields=fields)
        if execution.signal_id:
            execution_log_outcome(execution)
        return
    from webhooks.models import Signal

    with transaction.atomic():
        prior = (Execution.objects.select_for_update().filter(pk=execution.pk)
                 .values_list("status", flat=True).first())
        execution.save(update_fields=fields)
        before, after = OUTCOME.get(prior), OUTCOME.get(execution.status)
        if before == after:
            return
        changes = {}
        if after:
            changes[after] = F(after) + 1
        if before:
            changes[before] = F(before) - 1
        # Last in the transaction: the signal row is locked only until the commit right after.
        Signal.objects.filter(pk=execution.signal_id).update(**changes)


def execution_record_slippage(execution: Execution, *, side: str, reference, fill) -> None:
    """Per-subscriber slippage of the main fill against the signal's price (saved when the execution finishes)."""
    if reference and fill:
        execution.slippage, execution.slippage_bps = slippage(side=side, reference=reference, fill=fill)
