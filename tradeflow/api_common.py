"""What every customer-API view shares: the error format, pagination, tenant lookups, and the schema's errors.

Every error answers ``{"error": {"code", "message", "fields"}}``, the format of the webhooks
(``webhooks.services.WebhookError.body``), so one client-side error path handles both.
"""

from __future__ import annotations

from datetime import UTC

import django_filters
from django import forms
from django.core.exceptions import ObjectDoesNotExist
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db.backends.base.operations import BaseDatabaseOperations
from django.http import Http404
from django_filters.utils import get_model_field
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import exceptions, pagination
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from webhooks.services import WebhookError

# DRF's default codes, renamed to the webhooks' vocabulary where one exists.
CODES = {
    "not_authenticated": "unauthorized", "authentication_failed": "unauthorized", "permission_denied": "forbidden",
    "not_found": "not_found", "method_not_allowed": "method_not_allowed", "throttled": "rate_limited",
    "parse_error": "malformed_json", "unsupported_media_type": "unsupported_media_type",
    "not_acceptable": "not_acceptable", "invalid": "invalid_fields",
}
MESSAGES = {
    "unauthorized": "Authentication required: send `Authorization: Token <token>` (create one under Settings → "
                    "API tokens)",
    "not_found": "Not found: no such object among yours",
}


def _flatten(detail) -> dict:
    """DRF's nested error detail as ``{"field": "message", "nested.field": "message"}``."""
    out: dict[str, str] = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), item)
        elif isinstance(value, list):
            if all(not isinstance(v, (dict, list)) for v in value):
                out[prefix or "non_field_errors"] = " ".join(str(v) for v in value)
            else:
                for index, item in enumerate(value):
                    walk(f"{prefix}.{index}" if prefix else str(index), item)
        else:
            out[prefix or "non_field_errors"] = str(value)

    walk("", detail)
    return out


def _code_of(exc: exceptions.APIException) -> str:
    codes = exc.get_codes()
    if isinstance(exc, exceptions.ValidationError) or not isinstance(codes, str):
        return "invalid_fields"
    return CODES.get(codes, codes)


def exception_handler(exc, context):
    """DRF's handler, answered in the shared error format. Django's own ``ValidationError`` (raised by services)
    is a 400 naming its fields; a ``DoesNotExist`` that escapes a view is a 404, never a 500."""
    if isinstance(exc, DjangoValidationError):
        detail = exc.message_dict if hasattr(exc, "error_dict") else {"non_field_errors": exc.messages}
        exc = exceptions.ValidationError({"non_field_errors" if k == "__all__" else k: v for k, v in detail.items()})
    elif isinstance(exc, ObjectDoesNotExist | Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied()
    elif isinstance(exc, WebhookError):
        return Response(exc.body(), status=exc.status)
    response = drf_exception_handler(exc, context)
    if response is None:
        return None  # a real bug: let Django answer 500 and log it
    code = _code_of(exc) if isinstance(exc, exceptions.APIException) else "error"
    if isinstance(exc, exceptions.ValidationError):
        fields = _flatten(exc.detail)
        named = "; ".join(f"{name}: {text}" for name, text in fields.items())
        message = f"Invalid input ({named[:400]})" if named else "Invalid input"
    else:
        fields = {}
        detail = getattr(exc, "detail", None)
        default = str(getattr(exc, "default_detail", ""))
        # DRF's generic wording ("Not found.") becomes ours, which says what to do; a specific detail is kept.
        message = MESSAGES[code] if code in MESSAGES and str(detail) == default else str(detail or exc)
        if isinstance(exc, exceptions.Throttled) and exc.wait is not None:
            message = f"Too many requests for this token: retry in {int(exc.wait) + 1} s"
    response.data = WebhookError(response.status_code, code, message, fields).body()
    return response


def owned(getter, **kwargs):
    """A tenant object through its selector; anything not the caller's is a 404, like anything that does not
    exist (the answer must not tell which)."""
    try:
        return getter(**kwargs)
    except ObjectDoesNotExist as exc:
        raise exceptions.NotFound() from exc


class Conflict(exceptions.APIException):
    """The object's state forbids the action (closing a closed position): 409 with a code saying which."""

    status_code = 409
    default_code = "conflict"
    default_detail = "The object's current state does not allow this"


class UtcDateTimeFilter(django_filters.IsoDateTimeFilter):
    """An ISO 8601 date-time bound, turned into UTC before it reaches the database: PostgreSQL refuses offsets past
    ±15:59 (Python allows ±23:59), which would otherwise be a 500 instead of a 400."""

    def filter(self, qs, value):
        if value is not None:
            try:
                value = value.astimezone(UTC)
            except (OverflowError, ValueError) as exc:
                raise exceptions.ValidationError({self.field_name: "Date-time out of range"}) from exc
        return super().filter(qs, value)


# What each integer column holds, by Django field type: PostgreSQL's limits (SQLite's are looser, 64 bits for all),
# so a filter answers the same on both.
INTEGER_RANGES = BaseDatabaseOperations.integer_field_ranges
INT64_RANGE = INTEGER_RANGES["BigIntegerField"]


@extend_schema_field(OpenApiTypes.INT64)
class IntegerFilter(django_filters.NumberFilter):
    """A whole-number filter (an id such as ``account``, a status code), for every API FilterSet instead of
    ``NumberFilter``: a value its column cannot hold (past 64 bits, ``9.2e+18``, ``1.5``) is a 400 naming the field.
    ``NumberFilter`` takes any decimal, and SQLite raises ``OverflowError`` on a foreign key past 64 bits: a 500.

    The bounds are the column's (a foreign key's are those of the key it points to); ``min_value``/``max_value``
    given to the filter win."""

    field_class = forms.IntegerField

    def get_max_validator(self):
        return None  # NumberFilter's 1e50 cap: the column's bounds below replace it

    def column_range(self) -> tuple[int, int]:
        model_field = get_model_field(self.model, self.field_name) if getattr(self, "model", None) else None
        if model_field is not None and (model_field.many_to_one or model_field.one_to_one):
            model_field = model_field.target_field
        internal_type = model_field.get_internal_type() if model_field is not None else None
        return INTEGER_RANGES.get(internal_type, INT64_RANGE)

    @property
    def field(self):
        if not hasattr(self, "_field"):
            low, high = self.column_range()
            self.extra.setdefault("min_value", low)
            self.extra.setdefault("max_value", high)
        return super().field


class Pagination(pagination.PageNumberPagination):
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 200


ERROR_STATUSES = {"400": "Invalid input (each field named in `fields`)", "401": "No, unknown, revoked or expired token",
                  "403": "Read-only token on a write, or an operator endpoint", "404": "Not found among yours",
                  "405": "Method not allowed", "406": "Not acceptable", "415": "Send JSON",
                  "429": "Rate limited (per token)"}
WRITE_ERRORS = {"409": "The object's current state does not allow this"}


def add_error_responses(result, generator, request, public):
    """drf-spectacular post-processing hook: every operation documents the shared error answers."""
    schemas = result.setdefault("components", {}).setdefault("schemas", {})
    schemas.setdefault("Error", {
        "type": "object", "required": ["error"],
        "properties": {"error": {"type": "object", "required": ["code", "message", "fields"], "properties": {
            "code": {"type": "string"}, "message": {"type": "string"},
            "fields": {"type": "object", "additionalProperties": {"type": "string"}}}}}})
    for path_item in result.get("paths", {}).values():
        for method, operation in path_item.items():
            if method not in ("get", "post", "put", "patch", "delete"):
                continue
            responses = operation.setdefault("responses", {})
            statuses = ERROR_STATUSES if method == "get" else {**ERROR_STATUSES, **WRITE_ERRORS}
            for code, description in statuses.items():
                if code == "400" and method == "get" and not operation.get("parameters"):
                    continue
                responses.setdefault(code, {"description": description, "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
    return result


def page_not_found(request, exception=None):
    """The project's 404: a path under /api/ that matches no route answers in the API's error format (a program
    expects JSON), anything else gets Django's page."""
    from django.http import JsonResponse
    from django.views.defaults import page_not_found as django_page_not_found

    if request.path.startswith("/api/"):
        error = WebhookError(404, "not_found", f"No API endpoint at {request.path[:200]}: see /api/v1/docs/")
        return JsonResponse(error.body(), status=404)
    return django_page_not_found(request, exception)
