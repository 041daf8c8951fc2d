from __future__ import annotations

import functools
import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, timedelta
from decimal import Decimal

from django.db import connections, router, transaction
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from accounts.services import audit_record
from brokers.models import AccountApiKey, Broker, BrokerAccount

KEY_PREFIX = "tf_"
LAST_USED_RESOLUTION = timedelta(seconds=60)


def _hash(raw_key: str) -> str:
    return hashlib.sha256(raw_key.encode()).hexdigest()


@dataclass(frozen=True)
class NewKey:
    """A freshly minted webhook key: ``raw`` exists only in this object, never in the database."""

    record: AccountApiKey
    raw: str


def _mint(account: BrokerAccount) -> NewKey:
    raw = KEY_PREFIX + secrets.token_urlsafe(32)  # 256 bits
    record = AccountApiKey.objects.create(account=account, prefix=raw[:9], key_hash=_hash(raw))
    return NewKey(record=record, raw=raw)


@transaction.atomic
def account_create(
    *, owner, label: str, broker: str = Broker.PAPER, mode: str = BrokerAccount.Mode.PAPER,
    paper_capital: Decimal | None = None, currency: str = "INR", **fields,
) -> tuple[BrokerAccount, NewKey]:
    account = BrokerAccount(owner=owner, label=label, broker=broker, mode=mode, currency=currency, **fields)
    if paper_capital is not None:
        account.paper_capital = paper_capital
    if account.is_paper:
        account.balance = account.equity = account.paper_capital
    account.save()
    key = _mint(account)
    audit_record(user=owner, action="account.created", target=str(account))
    return account, key


@transaction.atomic
def api_key_regenerate(*, account: BrokerAccount, actor=None) -> NewKey:
    """Replace the account's webhook key; the old one stops working with this commit."""
    AccountApiKey.objects.filter(account=account).delete()
    key = _mint(account)
    audit_record(user=account.owner, actor=actor, action="account.key_regenerated", target=str(account))
    return key


# The encrypted credentials are left out (deferred: they load on access). Decrypting three Fernet tokens on
# every webhook is CPU for nothing: no part of accepting an alert needs them.
CREDENTIALS = ("api_key", "api_secret", "access_token")
_KEY_LOOKUP_DEFERRED = CREDENTIALS


@functools.cache
def _key_lookup_columns() -> tuple[tuple[str, ...], str]:
    """The account's attribute names (credentials left out) and the lookup's SELECT ... JOIN, without its WHERE."""
    fields = [f for f in BrokerAccount._meta.concrete_fields if f.name not in _KEY_LOOKUP_DEFERRED]
    columns = ", ".join(f'a."{f.column}"' for f in fields)
    sql = (f"SELECT {columns}, k.id, k.last_used, k.key_hash "  # noqa: S608 - model metadata only
           f'FROM "{BrokerAccount._meta.db_table}" a JOIN "{AccountApiKey._meta.db_table}" k ON k.account_id = a.id')
    return tuple(f.attname for f in fields), sql


_converters: dict[str, list] = {}


def _key_lookup_converters(connection) -> list:
    cached = _converters.get(connection.vendor)
    if cached is None:
        table, out = BrokerAccount._meta.db_table, []
        attnames, _ = _key_lookup_columns()
        for i, name in enumerate(attnames):
            field = next(f for f in BrokerAccount._meta.concrete_fields if f.attname == name)
            col = field.get_col(table)
            for convert in connection.ops.get_db_converters(col) + col.get_db_converters(connection):
                out.append((i, functools.partial(_apply, convert, col, connection)))
        cached = _converters[connection.vendor] = out
    return cached


def _apply(convert, expression, connection, value):
    return convert(value, expression, connection)


def api_key_authenticate(raw_key: str) -> BrokerAccount | None:
    """The account for a presented key, or None. Lookup is by SHA-256, so timing says nothing of the key."""
    return api_key_authenticate_many([raw_key]).get(raw_key)


def api_key_authenticate_many(raw_keys) -> dict[str, BrokerAccount]:
    """The accounts of the presented keys that exist, by raw key: one statement for a batch of webhooks.

    Plain SQL and ``Model.from_db`` (no ORM query compilation, no raw-query column mapping). The account's owner is
    not joined: the webhook path does not need it, and ``account.owner`` still loads on demand. ``last_used`` is
    written at most once a minute per key, in one UPDATE for the batch.
    """
    by_hash = {_hash(raw): raw for raw in raw_keys if raw and len(raw) <= 200}
    if not by_hash:
        return {}
    attnames, sql = _key_lookup_columns()
    using = router.db_for_read(BrokerAccount)
    connection = connections[using]
    with connection.cursor() as cursor:
        cursor.execute(f"{sql} WHERE k.key_hash IN ({', '.join(['%s'] * len(by_hash))})", list(by_hash))
        rows = cursor.fetchall()
    n = len(attnames)
    converters = _key_lookup_converters(connection)
    found, stale, now = {}, [], timezone.now()
    for row in rows:
        values = list(row[:n])
        for i, convert in converters:  # what the ORM's compiler applies (SQLite's text decimals, JSON, ...)
            values[i] = convert(values[i])
        account = BrokerAccount.from_db(using, attnames, values)
        key_pk, last_used, key_hash = row[n:]
        if isinstance(last_used, str):  # SQLite
            last_used = parse_datetime(last_used)
        if last_used is not None and timezone.is_naive(last_used):
            last_used = timezone.make_aware(last_used, UTC)
        if last_used is None or now - last_used > LAST_USED_RESOLUTION:
            stale.append(key_pk)  # coarse on purpose: one write a minute per key, not one per alert
        found[by_hash[key_hash]] = account
    if stale:
        AccountApiKey.objects.filter(pk__in=stale).update(last_used=now)
    return found


def account_set_enabled(*, account: BrokerAccount, enabled: bool, actor=None) -> BrokerAccount:
    account.enabled = enabled
    account.save(update_fields=["enabled"])
    audit_record(user=account.owner, actor=actor, action="account.enabled" if enabled else "account.disabled",
                 target=str(account))
    return account
