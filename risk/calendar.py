"""Import economic-calendar events (news lockout) from a CSV or an ICS file, with the standard library.

CSV: a header row with ``time`` (ISO 8601; naive times are UTC), ``market`` (or ``currency``), ``impact``
(low/medium/high) and ``title``; an optional ``uid`` makes re-imports update rather than duplicate.
ICS: each VEVENT's DTSTART (UTC ``Z``, ``TZID=`` or a date), SUMMARY and UID; impact from ``X-IMPACT`` or
``PRIORITY`` (1–4 high, 5 medium, 6–9 low; absent: high); market from ``CATEGORIES`` or ``X-MARKET``.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from risk.models import CalendarEvent

IMPACTS = {"low": "low", "medium": "medium", "med": "medium", "high": "high", "1": "low", "2": "medium", "3": "high"}


class CalendarImportError(ValueError):
    pass


@dataclass
class ImportResult:
    created: int = 0
    updated: int = 0
    errors: list[str] = field(default_factory=list)


def _aware(value: datetime, tz: str | None = None) -> datetime:
    if value.tzinfo is None:
        value = value.replace(tzinfo=ZoneInfo(tz) if tz else UTC)
    return value.astimezone(UTC)


def _save(result: ImportResult, *, starts_at, market: str, impact: str, title: str, uid: str) -> None:
    values = {"starts_at": starts_at, "market": market.upper()[:16], "impact": impact, "title": title[:200]}
    if uid:
        _, created = CalendarEvent.objects.update_or_create(uid=uid[:200], defaults=values)
    else:
        _, created = CalendarEvent.objects.get_or_create(**values)
    result.created += created
    result.updated += not created


def calendar_import_csv(*, text: str) -> ImportResult:
    result = ImportResult()
    reader = csv.DictReader(io.StringIO(text))
    fields = {f.strip().lower() for f in reader.fieldnames or []}
    if not {"time", "title"} <= fields:
        raise CalendarImportError("The CSV needs a header row with at least: time, title (and market, impact)")
    for n, row in enumerate(reader, start=2):
        row = {(k or "").strip().lower(): (v or "").strip() for k, v in row.items()}
        try:
            starts_at = _aware(datetime.fromisoformat(row["time"].replace("Z", "+00:00")))
        except ValueError:
            result.errors.append(f"line {n}: time {row['time']!r} is not an ISO date-time (2026-01-14T13:30Z)")
            continue
        impact = IMPACTS.get(row.get("impact", "high").lower() or "high")
        if impact is None:
            result.errors.append(f"line {n}: impact {row['impact']!r} is not low, medium or high")
            continue
        _save(result, starts_at=starts_at, market=row.get("market") or row.get("currency", ""), impact=impact,
              title=row["title"], uid=row.get("uid", ""))
    return result


def _unfold(text: str) -> list[str]:
    lines: list[str] = []
    for raw in text.replace("\r\n", "\n").split("\n"):
        if raw[:1] in (" ", "\t") and lines:
            lines[-1] += raw[1:]
        elif raw:
            lines.append(raw)
    return lines


def _ics_time(params: dict, value: str) -> datetime:
    if len(value) == 8:  # a whole-day event: its start of day, UTC
        return datetime.strptime(value, "%Y%m%d").replace(tzinfo=UTC)
    utc = value.endswith("Z")
    parsed = datetime.strptime(value.rstrip("Z"), "%Y%m%dT%H%M%S")
    return _aware(parsed.replace(tzinfo=UTC) if utc else parsed, params.get("TZID"))


def _ics_impact(event: dict) -> str:
    if "X-IMPACT" in event:
        return IMPACTS.get(event["X-IMPACT"].lower(), "high")
    priority = event.get("PRIORITY", "")
    if priority.isdigit() and int(priority):
        return "high" if int(priority) <= 4 else "medium" if int(priority) == 5 else "low"
    return "high"


def calendar_import_ics(*, text: str) -> ImportResult:
    result = ImportResult()
    event: dict | None = None
    for line in _unfold(text):
        name, _, value = line.partition(":")
        key, *raw_params = name.split(";")
        key = key.upper()
        if key == "BEGIN" and value.upper() == "VEVENT":
            event = {}
        elif key == "END" and value.upper() == "VEVENT" and event is not None:
            _ics_save(result, event)
            event = None
        elif event is not None:
            event[key] = value.strip()
            if key == "DTSTART":
                event["_params"] = dict(p.split("=", 1) for p in raw_params if "=" in p)
    if not result.created and not result.updated and not result.errors:
        raise CalendarImportError("No VEVENT found: is this an iCalendar (.ics) file?")
    return result


def _ics_save(result: ImportResult, event: dict) -> None:
    title = event.get("SUMMARY", "").replace("\\,", ",").replace("\\;", ";")
    try:
        starts_at = _ics_time(event.get("_params", {}), event["DTSTART"])
    except (KeyError, ValueError):
        result.errors.append(f"event {title or event.get('UID', '?')!r}: missing or bad DTSTART")
        return
    market = event.get("X-MARKET") or event.get("CATEGORIES", "").split(",")[0]
    _save(result, starts_at=starts_at, market=market, impact=_ics_impact(event), title=title or "Event",
          uid=event.get("UID", ""))


def calendar_import(*, name: str, content: bytes) -> ImportResult:
    text = content.decode("utf-8-sig", errors="replace")
    if name.lower().endswith(".ics") or text.lstrip().startswith("BEGIN:VCALENDAR"):
        return calendar_import_ics(text=text)
    return calendar_import_csv(text=text)
