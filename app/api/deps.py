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

__all__ = ["EngineDep", "SessionDep", "SettingsDep", "StorageDep", "WatcherDep", "WriteSessionDep"]


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
