import os

from app.core.config import Settings, get_settings


def test_defaults_and_env(monkeypatch):
    s = Settings(_env_file=None)
    assert s.database_url == "sqlite:///./data/tuner.db" and s.device == "auto"
    assert s.embedded_workers == len(os.sched_getaffinity(0))  # one worker process per core
    monkeypatch.setenv("TUNER_DATABASE_URL", "postgresql+psycopg://u@h/db")
    monkeypatch.setenv("TUNER_MAX_UPLOAD_MB", "2")
    s = Settings(_env_file=None)
    assert not s.is_sqlite and s.max_upload_bytes == 2 * 1024 * 1024


def test_threads_split_cores():
    assert Settings(torch_threads=3).threads_for(4) == 3
    assert Settings().threads_for(10_000) == 1


def test_get_settings_cached():
    assert get_settings() is get_settings()
