from __future__ import annotations

from accounts.models import AuditLog, TradingSettings, User


def audit_record(*, user: User | None, action: str, target: str = "", actor: User | None = None,
                 details: dict | None = None, ip: str | None = None) -> AuditLog:
    return AuditLog.objects.create(
        user=user, actor=actor or user, action=action, target=target[:200], details=details or {}, ip=ip
    )


def trading_settings_update(*, user: User, actor: User | None = None, ip: str | None = None,
                            **fields) -> TradingSettings:
    """Save the user's trading settings (the page and the API) and record what changed, from → to, in the audit
    log: auto-trade switched off or the default lots raised is something a trader or support must be able to see
    afterwards. Nothing changed: nothing saved, nothing recorded."""
    prefs = TradingSettings.objects.get_or_create(user=user)[0]
    changed = {name: (getattr(prefs, name), value) for name, value in fields.items() if getattr(prefs, name) != value}
    if not changed:
        return prefs
    for name, (_, value) in changed.items():
        setattr(prefs, name, value)
    prefs.save()
    audit_record(user=user, actor=actor, action="trading_settings.updated", target="trading settings", ip=ip,
                 details={name: {"from": str(old), "to": str(new)} for name, (old, new) in changed.items()})
    return prefs
