"""Domain errors: routes and services raise these; one handler in :mod:`app.main` turns them into JSON.

The body is always ``{"detail": "..."}`` or, for field errors, ``{"detail": [{"loc": [...], "msg": "..."}]}``
where ``msg`` is a ``dotted.field: reason`` line (the same wording as ``tuner run``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["Conflict", "DomainError", "FieldErrors", "Forbidden", "NotFound", "NotReady", "PayloadTooLarge", "QuotaExceeded",
           "field_error"]


class DomainError(Exception):
    status_code = 400
    headers: dict[str, str] | None = None

    def __init__(self, detail: str | list[dict[str, Any]]) -> None:
        super().__init__(detail if isinstance(detail, str) else "; ".join(d["msg"] for d in detail))
        self.detail = detail


class Forbidden(DomainError):
    status_code = 403


class NotFound(DomainError):
    status_code = 404


class Conflict(DomainError):
    status_code = 409


class PayloadTooLarge(DomainError):
    status_code = 413


class QuotaExceeded(DomainError):
    """429: a tenant's quota is used up; ``Retry-After`` says when to ask again."""

    status_code = 429

    def __init__(self, detail: str, *, retry_after_s: int) -> None:
        super().__init__(detail)
        self.headers = {"Retry-After": str(retry_after_s)}


class NotReady(DomainError):
    status_code = 503


class FieldErrors(DomainError):
    """422 with one entry per ``field: reason`` line."""

    status_code = 422

    def __init__(self, errors: Sequence[tuple[Sequence[str | int], str]]) -> None:
        super().__init__([{"loc": list(loc), "msg": msg, "type": "value_error"} for loc, msg in errors])


def field_error(loc: Sequence[str | int], reason: str) -> FieldErrors:
    """``field_error(["body", "dataset", "id"], "no such dataset")`` -> msg ``dataset.id: no such dataset``."""
    dotted = ".".join(str(p) for p in loc if p not in ("body", "query", "path", "form"))
    return FieldErrors([(loc, f"{dotted}: {reason}" if dotted else reason)])


def lines_to_errors(lines: Sequence[str], prefix: Sequence[str] = ("body",)) -> FieldErrors:
    """``field: reason`` lines (e.g. from :class:`tuner.SpecError`) -> a 422 with locations."""
    out: list[tuple[list[str | int], str]] = []
    for line in lines:
        field = line.split(": ", 1)[0] if ": " in line else ""
        loc: list[str | int] = [*prefix]
        if field and " " not in field and field != "(spec)":
            loc.extend(int(p) if p.isdigit() else p for p in field.split("."))
        out.append((loc, line))
    return FieldErrors(out)
