from __future__ import annotations

import logging
from collections import Counter
from dataclasses import replace
from decimal import Decimal

from django.conf import settings
from django.db import transaction
from django.db.models import Sum
from django.utils import timezone

from accounts.services import audit_record
from brokers.models import BrokerAccount, Execution, Position
from risk.models import RiskAdmission, RiskConfig, TradingHalt
from risk.rules import ALLOW, Counters, Decision, entry_decide, intent_value, is_exit, money, reject
from risk.selectors import day_start, risk_config_get, risk_counters, trading_halted
from tradeflow.fastinsert import insert_objects
from tradeflow.precompiled import Precompiled

log = logging.getLogger(__name__)
HALTED = "Trading halted by the operator (global kill switch): nothing was sent. Trading resumes when it is lifted."


def decide(*, execution: Execution) -> Decision:
    """Whether this execution may trade now. Exits are never blocked by entry rules; manual closes and
    Emergency Stop closes (kind ``close``) run even on a disabled account and while trading is halted."""
    is_signal = execution.kind == Execution.Kind.SIGNAL
    if (refused := gate_decide(execution, halted=is_signal and trading_halted())) is not None:
        return refused
    if not is_signal or is_exit(execution.intent):
        return ALLOW
    from billing.services import entry_block_reason  # the plan / trial gate (DESIGN.md "Decide")

    blocked = entry_block_reason(user=execution.account.owner, now=timezone.now())
    if (refused := entry_limits_decide(execution, blocked=blocked)) is not None:
        return refused
    return entry_admit(execution=execution)


def gate_decide(execution: Execution, *, halted: bool) -> Decision | None:
    """The checks that need no query (the account, its owner's settings and the kill switch are loaded): the
    refusal, or None. ``halted``: the global kill switch is on (it stops signals only)."""
    account = execution.account
    is_signal = execution.kind == Execution.Kind.SIGNAL
    if is_signal and halted:
        return reject("trading_halted", HALTED)
    if is_signal and not account.enabled:
        return reject("account_disabled", f"Account {account.label} is disabled; enable it to trade")
    if account.status == BrokerAccount.Status.LOGIN_NEEDED:
        return reject("login_needed", f"Account {account.label} needs a broker login: {account.status_message}")
    if account.mode == BrokerAccount.Mode.LIVE and not settings.LIVE_TRADING_ENABLED:
        return reject("live_trading_disabled",
                      "Live trading is switched off on this server (LIVE_TRADING_ENABLED); nothing was sent")
    if is_signal and not is_exit(execution.intent) and not account.owner.trading_settings.auto_trade:
        return reject("auto_trade_off",
                      "Auto-trade is off in your trading settings: new entries are not placed (exits still run)")
    return None


def entry_limits_decide(execution: Execution, *, blocked: str | None, bot_open: int | None = None) -> Decision | None:
    """An entry signal's plan gate (``blocked``: billing's reason, or None) and its bot subscription's own limits,
    before the user's risk rules: the refusal, or None. ``bot_open``: this bot's open positions on the account,
    when the caller counted them already."""
    if blocked:
        return reject("plan_limit", blocked)
    if execution.intent.get("limits"):
        decision = bot_limits_decide(execution, open_count=bot_open)
        if not decision.allowed:
            return decision
    return None


def entries_decide(executions: list[Execution], *, now=None) -> dict[int, Decision]:
    """``decide`` for many entry signals at once (one bot alert's subscribers), each on a different user: the same
    checks in the same order, with the kill switch read once, the plan gate and the bots' open positions counted
    in one query each, and the risk rules decided and the trade slots reserved under all the users' locks in one
    transaction (``entries_admit``). Returns each execution's decision by id."""
    from billing.services import entry_block_reasons

    now = now or timezone.now()
    halted = trading_halted()
    decisions: dict[int, Decision] = {}
    entries = []
    for execution in executions:
        if (refused := gate_decide(execution, halted=halted)) is not None:
            decisions[execution.pk] = refused
        elif execution.kind != Execution.Kind.SIGNAL or is_exit(execution.intent):
            decisions[execution.pk] = ALLOW
        else:
            entries.append(execution)
    blocked = entry_block_reasons(users=[e.account.owner for e in entries], now=now) if entries else {}
    bot_open = bot_open_counts(entries)
    admit = []
    for execution in entries:
        refused = entry_limits_decide(execution, blocked=blocked.get(execution.account.owner_id),
                                      bot_open=bot_open.get((execution.account_id, _bot_id(execution))))
        if refused is not None:
            decisions[execution.pk] = refused
        else:
            admit.append(execution)
    return decisions | entries_admit(admit, now=now)


def _bot_id(execution: Execution) -> int | None:
    return (execution.intent.get("bot") or {}).get("id")


def bot_open_counts(executions: list[Execution]) -> dict[tuple[int, int], int]:
    """(account id, bot id) → the bot's open positions on the account, for the executions whose subscription limits
    its concurrent positions (one grouped query)."""
    from django.db.models import Count

    wanted = [e for e in executions if (e.intent.get("limits") or {}).get("max_concurrent_positions") is not None]
    counts: dict[tuple[int, int], int] = {}
    for bot_id in {_bot_id(e) for e in wanted}:
        accounts = [e.account_id for e in wanted if _bot_id(e) == bot_id]
        rows = (Position.objects.filter(account_id__in=accounts, status=Position.Status.OPEN, meta__bot=bot_id)
                .values("account_id").annotate(n=Count("pk")))
        counts |= {(account, bot_id): 0 for account in accounts}
        counts |= {(row["account_id"], bot_id): row["n"] for row in rows}
    return counts


# Locked for every drain and bot batch: compiled once per process (tradeflow/precompiled.py).
_locked_configs = Precompiled(
    lambda user_ids: RiskConfig.objects.select_for_update().filter(user_id__any=user_ids).order_by("user_id"),
    model=RiskConfig, arity=1, lists=(0,))


def entries_admit(executions: list[Execution], *, now=None) -> dict[int, Decision]:
    """``entry_admit`` for many first-attempt entries at once: every user's RiskConfig row is locked (in user order,
    so two batches never deadlock), each entry decided on its user's counters, and the admitted trade slots inserted
    in one statement, all in one transaction. A user's entries are decided in list order, each seeing the slots of
    those admitted before it (a trade today, an open position in flight), as one by one."""
    now = now or timezone.now()
    decisions: dict[int, Decision] = {}
    flatten: dict[int, object] = {}
    if executions:
        with transaction.atomic(savepoint=False):
            def locked(user_ids):
                return {config.user_id: config for config in _locked_configs(user_ids)}

            users = sorted({e.account.owner_id for e in executions})
            configs = locked(users)
            if missing := sorted(set(users) - configs.keys()):  # users' first entries
                RiskConfig.objects.bulk_create([RiskConfig(user_id=uid) for uid in missing], ignore_conflicts=True)
                configs |= locked(missing)
            admissions = []
            counted: dict[tuple[int, int], Counters] = {}  # (user, account): read before this batch's slots
            slots: Counter = Counter()  # user: slots admitted so far in this batch
            for execution in executions:
                user, uid = execution.account.owner, execution.account.owner_id
                config = execution.risk_config = configs[uid]
                key = (uid, execution.account_id)
                if key not in counted:
                    counted[key] = risk_counters(user=user, account=execution.account, config=config, now=now)
                counters = replace(counted[key], trades_today=counted[key].trades_today + slots[uid],
                                   open_positions=counted[key].open_positions + slots[uid])
                decision = decisions[execution.pk] = entry_decide(config, counters, execution.intent, now)
                if decision.allowed:
                    slots[uid] += 1
                    admissions.append(RiskAdmission(execution=execution, user=user,
                                                    value=intent_value(execution.intent) or Decimal("0")))
                elif decision.code == "daily_loss_limit" and config.flatten_on_daily_loss:
                    flatten[uid] = user
            insert_objects([admissions], savepoint=False)
    for user in flatten.values():
        positions_flatten(user=user, why="Daily loss limit reached: open positions flattened")
    return decisions


def entry_admit(*, execution: Execution, now=None) -> Decision:
    """The user's risk rules for an entry, decided under a per-user lock (the RiskConfig row) together with
    reserving the trade slot, so concurrent entries see each other and can never pass a limit together."""
    user = execution.account.owner
    with transaction.atomic():
        config = RiskConfig.objects.select_for_update().filter(user=user).first()
        if config is None:  # the user's first entry (get_or_create settles a concurrent first insert)
            risk_config_get(user=user)
            config = RiskConfig.objects.select_for_update().get(user=user)
        execution.risk_config = config  # for the planned-value check after sizing (planned_value_decide)
        # A resumed execution keeps its slot. The claim counts attempts, so a first attempt has none to find.
        if execution.attempts != 1 and RiskAdmission.objects.filter(execution=execution).exists():
            return ALLOW
        now = now or timezone.now()
        counters = risk_counters(user=user, account=execution.account, config=config, now=now)
        decision = entry_decide(config, counters, execution.intent, now)
        if decision.allowed:
            RiskAdmission.objects.create(execution=execution, user=user,
                                         value=intent_value(execution.intent) or Decimal("0"))
    if decision.code == "daily_loss_limit" and config.flatten_on_daily_loss:
        positions_flatten(user=user, why="Daily loss limit reached: open positions flattened")
    return decision


def planned_value_decide(*, execution: Execution, value: Decimal) -> Decision:
    """The max position value rule for an entry the alert did not price (no qty × price in it): checked on the
    planned main order, before anything is sent. A refusal gives the admitted trade slot back."""
    config = execution.risk_config  # the row entry_admit locked for this run
    if not config.enabled or config.max_position_value is None or value <= config.max_position_value:
        return ALLOW
    RiskAdmission.objects.filter(execution=execution).delete()
    currency = execution.account.currency
    return reject("max_position_value", f"Position value {money(value, currency, sign=False)} over the limit of "
                  f"{money(config.max_position_value, currency, sign=False)} (sized from your settings and the "
                  "last price)")


def positions_flatten(*, user, why: str, actor=None) -> list[Execution]:
    """Close every open position of ``user`` (one close per position; a close already in flight is reused)."""
    from brokers.services.execution import execution_create_close

    positions = Position.objects.filter(account__owner=user, status=Position.Status.OPEN).select_related("account")
    return [execution_create_close(position=p, actor=actor, why=why, trigger="flatten") for p in positions]


def bot_limits_decide(execution: Execution, *, open_count: int | None = None) -> Decision:
    """A bot subscriber's own limits (seed 004): max concurrent positions from the bot, max daily loss.
    ``open_count``: the bot's open positions on the account, when already counted."""
    limits, bot_id = execution.intent["limits"], execution.intent["bot"]["id"]
    most = limits.get("max_concurrent_positions")
    if most is None and limits.get("max_daily_loss") is None:
        return ALLOW
    positions = Position.objects.filter(account=execution.account, meta__bot=bot_id)
    if open_count is None and most is not None:
        open_count = positions.filter(status=Position.Status.OPEN).count()
    if most is not None and open_count >= most:
        return reject("max_concurrent_positions", f"This bot already has {most} open position(s) on "
                      f"{execution.account.label}, your limit for it: no new entry until one closes")
    if limits.get("max_daily_loss") is not None:
        # The trader's day, as for their own daily loss rule (trading settings' timezone), not UTC's.
        today = day_start(user=execution.account.owner, now=timezone.now())
        realized = positions.filter(closed_at__gte=today).aggregate(total=Sum("realized_pnl"))["total"] or 0
        if -realized >= Decimal(limits["max_daily_loss"]):
            return reject("max_daily_loss", f"Daily loss limit reached for this bot: {-realized:.2f} lost today "
                          f"(limit {Decimal(limits['max_daily_loss']):.2f}). New entries resume tomorrow.")
    return ALLOW


def trading_halt_set(*, halted: bool, actor=None, reason: str = "") -> TradingHalt:
    """Turn the global kill switch on or off. Webhooks keep being acknowledged and logged while it is on."""
    row = TradingHalt.objects.create(halted=halted, actor=actor, reason=reason[:300])
    audit_record(user=None, actor=actor, action="trading.halted" if halted else "trading.resumed",
                 target="global kill switch", details={"reason": reason})
    log.warning("global kill switch %s by %s: %s", "ON" if halted else "OFF", actor, reason)
    return row


def risk_config_update(*, user, actor=None, **fields) -> RiskConfig:
    config = risk_config_get(user=user)
    for name, value in fields.items():
        setattr(config, name, value)
    config.save()
    audit_record(user=user, actor=actor, action="risk.config_updated", target=str(config),
                 details={k: str(v) for k, v in fields.items()})
    return config


def daily_loss_sweep(*, now=None) -> int:
    """Flatten the open positions of users with ``flatten_on_daily_loss`` whose loss today reached their limit on
    any account (run by beat, so it acts when the loss is reached, not only at the next entry). Returns how many
    closes were created; a position with a close already in flight is not closed twice."""
    from risk.selectors import account_pnl_today, day_start

    now = now or timezone.now()
    created = 0
    configs = RiskConfig.objects.filter(enabled=True, flatten_on_daily_loss=True, max_daily_loss__isnull=False,
                                        user__broker_accounts__positions__status=Position.Status.OPEN).distinct()
    for config in configs.select_related("user", "user__trading_settings"):
        since = day_start(user=config.user, now=now)
        accounts = BrokerAccount.objects.filter(owner=config.user)
        if any(account_pnl_today(account=a, since=since) <= -config.max_daily_loss for a in accounts):
            closes = positions_flatten(user=config.user, why="Daily loss limit reached: open positions flattened")
            audit_record(user=config.user, action="risk.daily_loss_flatten", target=f"{len(closes)} position(s)")
            created += len(closes)
    return created
