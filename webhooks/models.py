from __future__ import annotations

import uuid

from django.db import models
from django.db.models import Q


class Signal(models.Model):
    """An accepted alert, normalized into one intent. Its executions say what became of it."""

    class Format(models.TextChoices):
        OPTIONS = "options", "Options (S1…S8)"
        UNIFY = "unify.v1", "Unified v1"
        BOT = "bot", "Bot master"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    account = models.ForeignKey("brokers.BrokerAccount", null=True, blank=True, on_delete=models.CASCADE,
                                related_name="signals")
    # A bot's alert (seed 004 ``bot_signals``): its executions are one per subscriber.
    bot = models.ForeignKey("bots.Bot", null=True, blank=True, on_delete=models.CASCADE, related_name="signals")
    format = models.CharField(max_length=16, choices=Format.choices)
    client_id = models.CharField(max_length=100, blank=True, help_text="The alert's own `id`, if it sent one")
    body_hash = models.CharField(max_length=64)
    payload = models.JSONField(help_text="The body as received, with secrets removed")
    intent = models.JSONField()
    source_ip = models.GenericIPAddressField(null=True, blank=True)
    received_at = models.DateTimeField(db_index=True)
    ack_ms = models.DecimalField(max_digits=10, decimal_places=2, null=True, blank=True)
    # Bot signals: subscribers executed, and their outcomes as they finish (F-expression increments).
    total_subscribers = models.PositiveIntegerField(default=0)
    successful = models.PositiveIntegerField(default=0)
    failed = models.PositiveIntegerField(default=0)
    rejected = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["-received_at"]
        constraints = [
            # The explicit `id` is unique per target: per account, or per bot.
            models.UniqueConstraint(fields=["account", "client_id"], condition=~Q(client_id=""),
                                    name="uniq_signal_client_id"),
            models.UniqueConstraint(fields=["bot", "client_id"], condition=~Q(client_id=""),
                                    name="uniq_bot_signal_client_id"),
            models.CheckConstraint(condition=Q(account__isnull=True) | Q(bot__isnull=True),
                                   name="signal_one_target"),
        ]

    def __str__(self) -> str:
        return f"Signal {self.id}"


class WebhookLog(models.Model):
    """Every webhook request, good or bad (seed 003 ``webhooks_log``)."""

    # Looked up through the (account, -created_at) index below: no index of its own.
    account = models.ForeignKey("brokers.BrokerAccount", null=True, blank=True, on_delete=models.CASCADE,
                                related_name="webhook_logs", db_index=False)
    bot = models.ForeignKey("bots.Bot", null=True, blank=True, on_delete=models.CASCADE, related_name="webhook_logs")
    signal = models.ForeignKey(Signal, null=True, blank=True, on_delete=models.SET_NULL, related_name="logs")
    method = models.CharField(max_length=8)
    path = models.CharField(max_length=300)
    source_ip = models.GenericIPAddressField(null=True, blank=True)
    status = models.PositiveSmallIntegerField()
    payload = models.TextField(blank=True)
    response = models.JSONField(default=dict)
    latency_ms = models.DecimalField(max_digits=10, decimal_places=2)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["account", "-created_at"])]

    def __str__(self) -> str:
        return f"{self.method} {self.path} → {self.status}"
