from __future__ import annotations

from accounts.models import AuditLog, User


def audit_record(*, user: User | None, action: str, target: str = "", actor: User | None = None,
                 details: dict | None = None, ip: str | None = None) -> AuditLog:
    return AuditLog.objects.create(
        user=user, actor=actor or user, action=action, target=target[:200], details=details or {}, ip=ip
    )
