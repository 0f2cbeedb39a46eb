import sqlalchemy as sa

from app.db import get_engine, make_storage, release_slot, session_scope
from app.models import Job, utcnow


def _job(**kw):
    return Job(name="j", spec={}, study_name=f"s-{kw.get('id', 'x')}", n_trials=2, created_at=utcnow(), **kw)


def test_sqlite_pragmas(tmp_path):
    engine = get_engine(f"sqlite:///{tmp_path / 'x.db'}")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL


def test_optunas_sqlite_engine_has_the_same_pragmas(tmp_path):
    storage = make_storage(f"sqlite:///{tmp_path / 'x.db'}")
    with storage.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1


def test_session_scope_commits_and_rolls_back(settings):
    engine = get_engine(settings.database_url)
    with session_scope(engine, write=True) as s:
        s.add(_job(id="a"))
    try:
        with session_scope(engine, write=True) as s:
            s.add(_job(id="b"))
            raise RuntimeError
    except RuntimeError:
        pass
    with session_scope(engine) as s:
        assert s.scalars(sa.select(Job.id)).all() == ["a"]
        assert s.get(Job, "a").created_at.tzinfo is not None


def test_release_slot_never_below_zero(settings):
    engine = get_engine(settings.database_url)
    with session_scope(engine, write=True) as s:
        s.add(_job(id="a", trials_claimed=1))
    assert release_slot(engine, job_id="a") is True
    assert release_slot(engine, study_name="s-a") is False
