"""``tuner keys ...`` and ``tuner serve``'s safe default bind (issue 13), run in-process."""

from __future__ import annotations

import logging

import pytest
import sqlalchemy as sa

import app.core.config
import app.main
from app import cli
from app.db import get_engine, session_scope
from app.models import ApiKey
from app.services import keys


@pytest.fixture
def use_settings(settings, monkeypatch):
    monkeypatch.setattr(app.core.config, "get_settings", lambda: settings)
    return settings


def _keys(settings) -> list[ApiKey]:
    with session_scope(get_engine(settings.database_url)) as s:
        return keys.list_keys(s)


def test_create_list_revoke(use_settings, capsys):
    assert cli.main(["keys", "create", "alice", "--tenant", "team-a"]) == 0
    token = capsys.readouterr().out.strip()
    assert token.startswith("tsk_")
    assert cli.main(["keys", "create", "ops", "--admin"]) == 0
    capsys.readouterr()
    (alice, ops) = _keys(use_settings)
    assert (alice.tenant, alice.is_admin, ops.is_admin, ops.tenant) == ("team-a", False, True, "default")
    assert cli.main(["keys", "list"]) == 0
    listing = capsys.readouterr().out
    assert alice.id in listing and token[:10] in listing and token not in listing
    assert cli.main(["keys", "revoke", alice.id]) == 0
    assert _keys(use_settings)[0].revoked_at is not None
    with session_scope(get_engine(use_settings.database_url)) as s:
        assert keys.lookup(s, token) is None
    assert cli.main(["keys", "revoke", "no-such-id"]) == 1
    assert cli.main(["keys", "create", "x", "--tenant", "a b"]) == 2


def test_bootstrap_creates_one_admin_key_once(use_settings, capsys):
    assert cli.main(["keys", "bootstrap"]) == 0
    token = capsys.readouterr().out.strip().splitlines()[-1]
    assert token.startswith("tsk_")
    assert cli.main(["keys", "bootstrap"]) == 0
    assert "tsk_" not in capsys.readouterr().out  # printed once only
    (key,) = _keys(use_settings)
    assert key.is_admin and key.key_hash == keys.hash_key(token)


def test_bootstrap_stores_the_admin_key_from_the_environment(use_settings, monkeypatch):
    token = "x" * 40
    monkeypatch.setattr(app.core.config, "get_settings", lambda: use_settings.model_copy(update={"admin_key": token}))
    assert cli.main(["keys", "bootstrap"]) == 0
    assert cli.main(["keys", "bootstrap"]) == 0
    (key,) = _keys(use_settings)
    assert key.is_admin and key.key_hash == keys.hash_key(token)


@pytest.fixture
def serve(use_settings, monkeypatch):
    """``tuner serve`` up to the point where uvicorn would start; returns (exit code, app settings)."""
    seen = {}

    def fake_create_app(settings):
        seen["settings"] = settings
        return object()

    monkeypatch.setattr(app.main, "create_app", fake_create_app)
    monkeypatch.setattr(cli, "_supervise", lambda children, grace, serve=None, **_: 0)

    def run(*args: str):
        seen.clear()
        return cli.main(["serve", "--workers", "0", "--no-migrate", *args]), seen.get("settings")

    return run


def test_serve_refuses_another_host_without_keys(serve, capsys, caplog):
    code, started = serve("--host", "0.0.0.0")
    assert code == 2 and started is None
    assert "refusing to listen on 0.0.0.0" in capsys.readouterr().err
    assert serve("--host", "127.0.0.1")[0] == 0
    assert serve("--host", "::1")[0] == 0
    caplog.clear()
    with caplog.at_level(logging.INFO):
        code, started = serve("--host", "0.0.0.0", "--insecure")
    assert code == 0 and started is not None and not started.require_keys
    assert caplog.records[0].getMessage().startswith("INSECURE")


def test_serve_on_another_host_with_keys_requires_them(serve, use_settings):
    with session_scope(get_engine(use_settings.database_url), write=True) as s:
        _key, _token = keys.create_key(s, "ops", admin=True)
    code, started = serve("--host", "0.0.0.0")
    assert code == 0 and started.require_keys  # revoking the last key then closes the service
    with session_scope(get_engine(use_settings.database_url), write=True) as s:
        s.execute(sa.update(ApiKey).values(revoked_at=sa.func.now()))
    assert serve("--host", "0.0.0.0")[0] == 2


def test_keys_on_a_database_never_migrated_migrates_it_first(tmp_path, monkeypatch, capsys):
    """README: ``export TUNER_API_KEY=$(tuner keys create alice --tenant team-a)`` before anything else ran."""
    fresh = app.core.config.Settings(database_url=f"sqlite:///{tmp_path / 'new.db'}")
    monkeypatch.setattr(app.core.config, "get_settings", lambda: fresh)
    assert cli.main(["keys", "create", "alice", "--tenant", "team-a"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip().startswith("tsk_") and "\n" not in captured.out.strip()
    assert "migrating it first" in captured.err and "Traceback" not in captured.err
    assert [k.name for k in _keys(fresh)] == ["alice"]
    assert cli.main(["keys", "list"]) == 0 and "migrating" not in capsys.readouterr().err  # only once


def test_keys_on_an_unreachable_database_is_one_line(monkeypatch, capsys):
    down = app.core.config.Settings(database_url="postgresql+psycopg://nobody@127.0.0.1:1/none")
    monkeypatch.setattr(app.core.config, "get_settings", lambda: down)
    assert cli.main(["keys", "list"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("tuner keys: cannot use the database:") and "\n" not in err
