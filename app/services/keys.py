"""API keys: created with a random token shown once, stored as its SHA-256, looked up by that hash.

The token has ``tsk_`` in front so it is recognisable (secret scanners, logs); it carries 256 bits of
randomness, so an unsalted fast hash is enough (nothing to brute-force, unlike a password).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

import sqlalchemy as sa
from sqlalchemy.orm import Session

from app.errors import NotFound
from app.models import DEFAULT_TENANT, ApiKey, utcnow
from app.services.tenancy import Principal

__all__ = ["PREFIX", "any_active_key", "any_key_ever", "create_key", "ensure_key", "hash_key", "list_keys", "lookup", "revoke_key"]

PREFIX = "tsk_"


def hash_key(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_key(session: Session, name: str, *, tenant: str = DEFAULT_TENANT, admin: bool = False,
               token: str | None = None) -> tuple[ApiKey, str]:
    """A new key and its token (the only time the token exists outside the caller's hands)."""
    token = token or PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(name=name, tenant=tenant, is_admin=admin, key_hash=hash_key(token), prefix=token[:10],
                 created_at=utcnow())
    session.add(key)
    session.flush()
    return key, token


def ensure_key(session: Session, token: str, *, name: str = "admin") -> tuple[ApiKey, bool]:
    """The admin key with this token, created unless it exists (``TUNER_ADMIN_KEY``); True when created."""
    existing = session.scalar(sa.select(ApiKey).where(ApiKey.key_hash == hash_key(token)))
    if existing is not None:
        return existing, False
    return create_key(session, name, admin=True, token=token)[0], True


def list_keys(session: Session) -> list[ApiKey]:
    return list(session.scalars(sa.select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)))


def revoke_key(session: Session, key_id: str) -> ApiKey:
    key = session.get(ApiKey, key_id)
    if key is None:
        raise NotFound(f"no key with id {key_id}")
    if key.revoked_at is None:
        key.revoked_at = utcnow()
        session.flush()
    return key


def any_active_key(session: Session) -> bool:
    return session.scalar(sa.select(ApiKey.id).where(ApiKey.revoked_at.is_(None)).limit(1)) is not None


def any_key_ever(session: Session) -> bool:
    """Whether a key was ever created (revoked or not): once one has, revoking them all keeps the service
    closed instead of opening it to anonymous callers."""
    return session.scalar(sa.select(ApiKey.id).limit(1)) is not None


def lookup(session: Session, token: str) -> Principal | None:
    """The principal of a valid, unrevoked key; None otherwise."""
    digest = hash_key(token)
    key = session.scalar(sa.select(ApiKey).where(ApiKey.key_hash == digest))
    # the index finds the row; compare_digest keeps the final check constant-time all the same
    if key is None or key.revoked_at is not None or not hmac.compare_digest(key.key_hash, digest):
        return None
    return Principal(tenant=key.tenant, admin=key.is_admin, key_id=key.id)
