"""FastAPI dependencies as ``Annotated`` aliases: ``def read_job(session: SessionDep, job_id: str)``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

import optuna
from fastapi import Depends, Request
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from app.core.config import Settings
from app.db import session_scope
from app.services.watch import JobWatcher, watcher_for

__all__ = ["DATASET_EXISTS", "JOB_EXISTS", "EngineDep", "SessionDep", "SettingsDep", "StorageDep", "WatcherDep", "WriteSessionDep"]


def get_settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


def get_engine(request: Request) -> Engine:
    return request.app.state.engine  # type: ignore[no-any-return]


def get_session(engine: Annotated[Engine, Depends(get_engine)]) -> Iterator[Session]:
    with session_scope(engine) as session:
        yield session


def get_write_session(engine: Annotated[Engine, Depends(get_engine)]) -> Iterator[Session]:
    with session_scope(engine, write=True) as session:
        yield session


def get_storage(request: Request) -> optuna.storages.BaseStorage:
    return request.app.state.storage()  # type: ignore[no-any-return]


SettingsDep = Annotated[Settings, Depends(get_settings)]
EngineDep = Annotated[Engine, Depends(get_engine)]
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
WriteSessionDep = Annotated[Session, Depends(get_write_session, scope="function")]  # commit before the reply
StorageDep = Annotated[optuna.storages.BaseStorage, Depends(get_storage)]


async def get_watcher(request: Request) -> JobWatcher:
    return watcher_for(request.app.state, request.app.state.engine)


WatcherDep = Annotated[JobWatcher, Depends(get_watcher)]  # long-poll and SSE wait here, not on the database


def _job_exists(job_id: str, engine: EngineDep, request: Request) -> None:
    """404 for an unknown (or another tenant's) job from a read, before a write session takes the lock."""
    from app.api.auth import get_principal
    from app.services.jobs import get_job

    with session_scope(engine) as session:
        get_job(session, job_id, principal=get_principal(request))


def _dataset_exists(dataset_id: str, engine: EngineDep, request: Request) -> None:
    from app.api.auth import get_principal
    from app.services.datasets import get_dataset

    with session_scope(engine) as session:
        get_dataset(session, dataset_id, principal=get_principal(request))


# Route-level dependencies run before the parameters' (so before WriteSessionDep's write lock): a request for
# an id that does not exist never waits for, nor holds, the database's write lock.
JOB_EXISTS = Depends(_job_exists)
DATASET_EXISTS = Depends(_dataset_exists)
