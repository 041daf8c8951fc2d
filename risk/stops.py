"""Emergency Stop (seed 003), square-off-all (seed 001) and the paper → live switch (seed 002)."""

from __future__ import annotations

import time
from decimal import Decimal

from django.conf import settings

from accounts.services import audit_record
from brokers.adapters.base import BrokerError
from brokers.models import BrokerAccount, Execution, Position

WAIT_SECONDS = 10.0  # how long the answer waits for a close a worker is running


class LiveSwitchRefused(Exception):
    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


def _close_now(position: Position, *, actor, why: str, trigger: str) -> tuple[Execution, str]:
    """Create the close and run it in this request (safe alongside the queued task: the claim lets one run it).
    A transient broker error leaves it pending for the task's retries (and the sweeper); the answer reports it
    as not closed. One a worker is already running is waited for, briefly."""
    from brokers.services.execution import execution_create_close, execution_run

    execution = execution_create_close(position=position, actor=actor, why=why, trigger=trigger)
    transient = ""
    try:
        execution_run(execution_id=execution.pk)
    except BrokerError as exc:
        transient = f"{exc.message}; TradeFlow keeps retrying the close"
    deadline = time.monotonic() + WAIT_SECONDS
    execution.refresh_from_db()
    while execution.status == Execution.Status.RUNNING and time.monotonic() < deadline:
        time.sleep(0.2)
        execution.refresh_from_db()
    return execution, transient


def positions_close_all(*, user, actor=None, why: str, trigger: str) -> dict:
    """Close every open position of ``user`` across all accounts; ``{"positions_closed", "total_pnl", "errors"}``.
    A close that fails is named in ``errors`` (and stays with the retry path), never hidden."""
    closed, total, errors = 0, Decimal("0"), []
    positions = Position.objects.filter(account__owner=user, status=Position.Status.OPEN).select_related("account")
    for position in positions:
        execution, transient = _close_now(position, actor=actor, why=why, trigger=trigger)
        position.refresh_from_db()
        if position.status == Position.Status.CLOSED:
            closed += 1
            total += position.realized_pnl
            continue
        detail = transient or execution.reason or f"close is {execution.get_status_display().lower()}"
        errors.append(f"Failed to close {position.symbol} on {position.account.label}: {detail}")
    return {"positions_closed": closed, "total_pnl": total, "errors": errors}


def emergency_stop(*, user, actor=None, ip: str | None = None) -> dict:
    """Disable every account of ``user`` (so no new entry slips in), close every open position at market,
    and audit it. Accounts stay disabled until the customer re-enables them."""
    disabled = list(BrokerAccount.objects.filter(owner=user, enabled=True).values_list("label", flat=True))
    BrokerAccount.objects.filter(owner=user).update(enabled=False)
    result = positions_close_all(user=user, actor=actor or user, why="Emergency Stop", trigger="emergency_stop")
    audit_record(user=user, actor=actor or user, action="risk.emergency_stop", target=f"{len(disabled)} account(s)",
                 details={**result, "total_pnl": str(result["total_pnl"]), "accounts_disabled": disabled}, ip=ip)
    return result


def square_off_all(*, user, actor=None, ip: str | None = None) -> dict:
    result = positions_close_all(user=user, actor=actor or user, why="Square off all", trigger="square_off_all")
    audit_record(user=user, actor=actor or user, action="risk.square_off_all", target="all positions",
                 details={**result, "total_pnl": str(result["total_pnl"])}, ip=ip)
    return result


def stop_summary(result: dict) -> str:
    text = f"{result['positions_closed']} position(s) closed, total P&L {result['total_pnl']:.2f}."
    if result["errors"]:
        text += f" {len(result['errors'])} could not be closed (retrying): " + "; ".join(result["errors"])
    return text


def user_has_mfa(user) -> bool:
    from allauth.mfa.models import Authenticator

    MFA_TYPES = (Authenticator.Type.TOTP, Authenticator.Type.WEBAUTHN)  # recovery codes alone are not a factor
    return Authenticator.objects.filter(user=user, type__in=MFA_TYPES).exists()


def account_switch_to_live(*, account: BrokerAccount, actor, confirmed: bool, ip: str | None = None) -> BrokerAccount:
    """Paper first: live needs the server's LIVE_TRADING_ENABLED, MFA on the owner's login, and a confirmation."""
    if account.broker == "paper":
        raise LiveSwitchRefused("The built-in paper broker has no live mode: connect Zerodha or Binance to trade live.")
    if not settings.LIVE_TRADING_ENABLED:
        raise LiveSwitchRefused("Live trading is switched off on this server (LIVE_TRADING_ENABLED); "
                                "the account stays on paper.")
    if not user_has_mfa(account.owner):
        raise LiveSwitchRefused("Turn on two-factor authentication (authenticator app) before trading live.")
    if not confirmed:
        raise LiveSwitchRefused("Tick the confirmation: live orders use real money at your broker.")
    BrokerAccount.objects.filter(pk=account.pk).update(mode=BrokerAccount.Mode.LIVE)
    account.mode = BrokerAccount.Mode.LIVE
    audit_record(user=account.owner, actor=actor, action="account.live", target=str(account), ip=ip)
    return account


def account_switch_to_paper(*, account: BrokerAccount, actor, ip: str | None = None) -> BrokerAccount:
    BrokerAccount.objects.filter(pk=account.pk).update(mode=BrokerAccount.Mode.PAPER)
    account.mode = BrokerAccount.Mode.PAPER
    audit_record(user=account.owner, actor=actor, action="account.paper", target=str(account), ip=ip)
    return account
