from __future__ import annotations

from django.conf import settings

from brokers.models import BrokerAccount, Execution
from risk.rules import ALLOW, Decision, is_exit, reject


def decide(*, execution: Execution) -> Decision:
    """Whether this execution may trade now. Exits are never blocked by entry rules."""
    account = execution.account
    if not account.enabled:
        return reject("account_disabled", f"Account {account.label} is disabled; enable it to trade")
    if account.status == BrokerAccount.Status.LOGIN_NEEDED:
        return reject("login_needed", f"Account {account.label} needs a broker login: {account.status_message}")
    if account.mode == BrokerAccount.Mode.LIVE and not settings.LIVE_TRADING_ENABLED:
        return reject("live_trading_disabled",
                      "Live trading is switched off on this server (LIVE_TRADING_ENABLED); nothing was sent")
    if execution.kind == Execution.Kind.SIGNAL and not is_exit(execution.intent):
        if not account.owner.trading_settings.auto_trade:
            return reject("auto_trade_off",
                          "Auto-trade is off in your trading settings: new entries are not placed (exits still run)")
    return ALLOW
