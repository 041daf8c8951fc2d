from __future__ import annotations

from decimal import Decimal
from zoneinfo import available_timezones

from django.conf import settings
from django.contrib.auth.models import AbstractUser, BaseUserManager
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models

TIMEZONE_CHOICES = sorted((tz, tz) for tz in available_timezones())


class UserManager(BaseUserManager):
    use_in_migrations = True

    def _create(self, email: str, password: str | None, **extra) -> User:
        if not email:
            raise ValueError("An email address is required")
        user = self.model(email=self.normalize_email(email).lower(), **extra)
        user.set_password(password)
        user.save(using=self._db)
        return user

    def create_user(self, email: str, password: str | None = None, **extra) -> User:
        extra.setdefault("is_staff", False)
        extra.setdefault("is_superuser", False)
        return self._create(email, password, **extra)

    def create_superuser(self, email: str, password: str | None = None, **extra) -> User:
        extra.update(is_staff=True, is_superuser=True)
        return self._create(email, password, **extra)


class User(AbstractUser):
    """A TradeFlow login. Customers trade; staff (role admin) operate. Email is the login."""

    username = None
    email = models.EmailField("email address", unique=True)

    USERNAME_FIELD = "email"
    REQUIRED_FIELDS: list[str] = []
    objects = UserManager()

    class Meta:
        ordering = ["email"]

    def __str__(self) -> str:
        return self.email

    @property
    def role(self) -> str:
        return "admin" if self.is_staff else "customer"


class TradingSettings(models.Model):
    """Per-user trading preferences (seed 000: "settings persist in database")."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="trading_settings")
    default_lots = models.PositiveIntegerField(default=1, validators=[MinValueValidator(1), MaxValueValidator(1000)])
    auto_trade = models.BooleanField(
        default=True, help_text="When off, incoming signals are recorded and rejected instead of traded."
    )
    hedge_pct = models.DecimalField(
        "hedge %",
        max_digits=5,
        decimal_places=2,
        default=Decimal("30"),
        validators=[MinValueValidator(0), MaxValueValidator(100)],
        help_text="Options format: lots bought as a hedge, as a % of the main lots (0 = no hedge).",
    )
    hedge_strike_offset = models.PositiveIntegerField(
        default=200, help_text="Options format: points further out of the money for the hedge strike."
    )
    timezone = models.CharField(max_length=64, choices=TIMEZONE_CHOICES, default="Asia/Kolkata")
    telegram_chat_id = models.CharField(max_length=64, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "trading settings"

    def __str__(self) -> str:
        return f"Trading settings of {self.user}"


class AuditLog(models.Model):
    """Who did what to money-relevant state (account switches, key regeneration, stops)."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    action = models.CharField(max_length=64)
    target = models.CharField(max_length=200, blank=True)
    details = models.JSONField(default=dict, blank=True)
    ip = models.GenericIPAddressField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["user", "-created_at"])]

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M} {self.action} {self.target}"


class ApiToken(models.Model):
    """A personal API token for the customer's own programs. Only its SHA-256 is stored; the raw token is shown
    once. ``prefix`` (the first characters) is what pages show so the customer can tell tokens apart."""

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=80)
    prefix = models.CharField(max_length=16)
    key_hash = models.CharField(max_length=64, unique=True)
    read_only = models.BooleanField(default=False, help_text="Read-only tokens may only GET; writes answer 403")
    created_at = models.DateTimeField(auto_now_add=True)
    last_used = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["owner", "-created_at"])]

    def __str__(self) -> str:
        return f"{self.name} ({self.masked})"

    @property
    def masked(self) -> str:
        return f"{self.prefix}{'•' * 8}"

    @property
    def scope(self) -> str:
        return "read" if self.read_only else "read/write"
