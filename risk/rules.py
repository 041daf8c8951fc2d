"""Risk rules: pure functions of (config, counters snapshot, intent, clock) → Decision.

The risk issue adds the full rule set (daily loss, trades per day, hours, news lockout…); the shape
is fixed here so the engine calls one ``decide`` whatever the rules become.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Decision:
    allowed: bool
    code: str = ""
    message: str = ""


ALLOW = Decision(True)


def reject(code: str, message: str) -> Decision:
    return Decision(False, code, message)


def is_exit(intent: dict) -> bool:
    return intent.get("action") in ("exit", "close_all")
