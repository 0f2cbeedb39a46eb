"""Who is asking (:class:`Principal`) and the owner filter every service query goes through.

A principal is the tenant of the caller's API key (``admin`` keys see every tenant). Without any key the
service is single-user: the caller is :data:`ANONYMOUS`, an admin of tenant ``default`` (today's behaviour).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

import sqlalchemy as sa

from app.errors import Forbidden
from app.models import DEFAULT_TENANT

__all__ = ["ANONYMOUS", "Principal", "can_see", "owned", "require_admin"]

S = TypeVar("S", bound=sa.Select[Any])


@dataclass(frozen=True)
class Principal:
    tenant: str
    admin: bool = False
    key_id: str | None = None  # None: no keys exist (anonymous single-user mode)


ANONYMOUS = Principal(tenant=DEFAULT_TENANT, admin=True)


def owned(stmt: S, model: Any, principal: Principal) -> S:
    """``stmt`` limited to the rows of ``model`` (``Job``, ``Dataset``) that ``principal`` may see."""
    if principal.admin:
        return stmt
    return stmt.where(model.tenant == principal.tenant)  # type: ignore[no-any-return]


def can_see(row: Any, principal: Principal) -> bool:
    return principal.admin or row.tenant == principal.tenant


def require_admin(principal: Principal, what: str) -> None:
    """403 unless ``principal`` is an admin (the anonymous single-user caller is one)."""
    if not principal.admin:
        raise Forbidden(f"{what} needs an admin key")
