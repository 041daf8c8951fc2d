from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal

from django.db import transaction
from django.utils import timezone

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


def api_key_authenticate(raw_key: str) -> BrokerAccount | None:
    """The account for a presented key, or None. Lookup is by SHA-256, so timing says nothing of the key."""
    if not raw_key or len(raw_key) > 200:
        return None
    record = (
        AccountApiKey.objects.select_related("account", "account__owner")
        .filter(key_hash=_hash(raw_key))
        .first()
    )
    if record is None:
        return None
    now = timezone.now()
    if record.last_used is None or now - record.last_used > LAST_USED_RESOLUTION:
        # Coarse on purpose: one write a minute per key, not one per alert.
        AccountApiKey.objects.filter(pk=record.pk).update(last_used=now)
    return record.account


def account_set_enabled(*, account: BrokerAccount, enabled: bool, actor=None) -> BrokerAccount:
    account.enabled = enabled
    account.save(update_fields=["enabled"])
    audit_record(user=account.owner, actor=actor, action="account.enabled" if enabled else "account.disabled",
                 target=str(account))
    return account
