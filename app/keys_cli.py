"""``tuner keys create|list|revoke|bootstrap``: manage API keys in the service's database.

The token is printed once, on stdout, by ``create`` (and by ``bootstrap`` when it makes one); only its
SHA-256 is stored, so a lost key cannot be shown again: revoke it and create another.
"""

from __future__ import annotations

import argparse
import re
import sys
from typing import Any

__all__ = ["register"]


def register(sub: Any) -> None:
    """Add the ``keys`` command to the ``tuner`` parser's subcommands."""
    keys = sub.add_parser("keys", help="create, list and revoke API keys",
                          description="API keys: once one exists, every request needs 'Authorization: Bearer'.")
    ksub = keys.add_subparsers(dest="keys_command", required=True)
    p = ksub.add_parser("create", help="create a key and print it (once)")
    p.add_argument("name", help="who or what uses it (shown in `tuner keys list`)")
    p.add_argument("--tenant", default="default", help="the tenant its jobs and data sets belong to")
    p.add_argument("--admin", action="store_true", help="sees and manages every tenant's jobs and data sets")
    p.set_defaults(func=_guarded(_create))
    p = ksub.add_parser("list", help="list keys (never the keys themselves)")
    p.set_defaults(func=_guarded(_list))
    p = ksub.add_parser("revoke", help="revoke a key by its id (takes effect within a few seconds)")
    p.add_argument("id")
    p.set_defaults(func=_guarded(_revoke))
    p = ksub.add_parser(
        "bootstrap", help="make sure an admin key exists (TUNER_ADMIN_KEY, or a new one printed once)",
        description="Store TUNER_ADMIN_KEY as an admin key if it is set; otherwise, if no key exists at all, "
                    "create an admin key and print it once. Does nothing when keys exist already.")
    p.set_defaults(func=_guarded(_bootstrap))


def _engine() -> Any:
    """The service's database, migrated first when it is new or behind (``tuner migrate``'s work, said on
    stderr): a key can only be stored in a table that exists."""
    from app.core.config import get_settings
    from app.db import get_engine
    from app.migrate import current_revision, head_revision, upgrade

    url = get_settings().database_url
    engine = get_engine(url)
    with engine.connect() as conn:
        behind = current_revision(conn) != head_revision()
    if behind:
        print("the database was not migrated; migrating it first (tuner migrate)", file=sys.stderr)
        upgrade(url)
    return engine


def _guarded(func: Any) -> Any:
    """A database that cannot be reached or used is one line on stderr and exit status 1, not a traceback."""

    def run(args: argparse.Namespace) -> int:
        import sqlalchemy as sa

        try:
            return int(func(args))
        except sa.exc.SQLAlchemyError as exc:
            reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
            print(f"tuner keys: cannot use the database: {reason}", file=sys.stderr)
            return 1

    return run


def _create(args: argparse.Namespace) -> int:
    from app.db import session_scope
    from app.services import keys

    if not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", args.tenant):
        print("--tenant: 1 to 64 letters, digits, '.', '_' or '-'", file=sys.stderr)
        return 2
    if not 0 < len(args.name) <= 200:
        print("NAME: 1 to 200 characters", file=sys.stderr)
        return 2
    with session_scope(_engine(), write=True) as s:
        key, token = keys.create_key(s, args.name, tenant=args.tenant, admin=args.admin)
        key_id = key.id
    role = "admin" if args.admin else f"tenant {args.tenant}"
    print(f"created key {key_id} ({args.name}, {role}); it is shown only now:", file=sys.stderr)
    print(token)
    return 0


def _list(_args: argparse.Namespace) -> int:
    from app.db import session_scope
    from app.services import keys

    with session_scope(_engine()) as s:
        rows = keys.list_keys(s)
        print(f"{'ID':36}  {'PREFIX':10}  {'TENANT':16}  {'ADMIN':5}  {'CREATED':19}  {'REVOKED':19}  NAME")
        for k in rows:
            revoked = k.revoked_at.strftime("%Y-%m-%d %H:%M:%S") if k.revoked_at else "-"
            print(f"{k.id:36}  {k.prefix:10}  {k.tenant:16}  {'yes' if k.is_admin else 'no':5}  "
                  f"{k.created_at.strftime('%Y-%m-%d %H:%M:%S'):19}  {revoked:19}  {k.name}")
    return 0


def _revoke(args: argparse.Namespace) -> int:
    from app.db import session_scope
    from app.errors import NotFound
    from app.services import keys

    try:
        with session_scope(_engine(), write=True) as s:
            keys.revoke_key(s, args.id)
    except NotFound as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"revoked key {args.id}", file=sys.stderr)
    return 0


def _bootstrap(_args: argparse.Namespace) -> int:
    from app.core.config import get_settings
    from app.db import session_scope
    from app.services import keys

    settings = get_settings()
    with session_scope(_engine(), write=True) as s:
        if settings.admin_key:
            if len(settings.admin_key) < 32:
                print("TUNER_ADMIN_KEY: use at least 32 random characters", file=sys.stderr)
                return 2
            _key, created = keys.ensure_key(s, settings.admin_key)
            print("admin key from TUNER_ADMIN_KEY " + ("stored" if created else "already stored"), file=sys.stderr)
            return 0
        if keys.list_keys(s):
            print("API keys exist already; nothing to do", file=sys.stderr)
            return 0
        _key, token = keys.create_key(s, "admin (bootstrap)", admin=True)
    print(f"created the first admin key; it is shown only now, keep it:\n{token}", flush=True)
    return 0
