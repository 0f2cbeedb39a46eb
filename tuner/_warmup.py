"""Imported by the fork server of ``tuner run --jobs N`` (:mod:`tuner.parallel`): pay the first-use costs
once there, so that every process forked from it starts its first trial at once.

A fresh process spends about half a second on its first Optuna RDB storage and study (SQLAlchemy mapper
configuration, dialect and statement setup, sampler imports) before it trains anything; with a few
seconds of search that is a large part of the wall time. Here a throwaway study on an in-memory SQLite
database asks and tells one trial through the same code paths, then everything is closed: the fork server
holds no connection, thread or file that its children could inherit.
"""

from __future__ import annotations


def _exercise(storage: object) -> None:
    import optuna

    for sampler in (optuna.samplers.TPESampler(seed=0), optuna.samplers.RandomSampler(seed=0)):
        study = optuna.create_study(storage=storage, sampler=sampler, pruner=optuna.pruners.MedianPruner())  # type: ignore[arg-type]
        trial = study.ask()
        trial.suggest_float("x", 1e-4, 1.0, log=True)
        trial.suggest_categorical("c", [1, 2])
        trial.set_user_attr("a", 1)
        trial.report(0.5, 1)
        trial.should_prune()
        study.tell(trial, 0.5)
        study.trials  # noqa: B018 - reads every trial back


def warm_up() -> None:
    import tempfile
    from pathlib import Path

    import optuna

    from tuner.parallel import SharedStorage
    from tuner.storage import open_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="tuner-warmup-") as tmp:
        storage = open_storage(f"sqlite:///{tmp}/w.db")  # the RDB path (a SQLite or Postgres URL)
        assert storage is not None
        _exercise(storage)
        getattr(storage, "_backend", storage).engine.dispose()
        _exercise(SharedStorage(journal=str(Path(tmp) / "w.journal")).open())  # an in-memory study's path


if __name__ != "__main__":  # on import, in the fork server
    try:
        warm_up()
    except Exception as exc:  # noqa: BLE001 - a failed warm-up only costs the time it would have saved
        import logging

        logging.getLogger(__name__).debug("fork server warm-up failed: %r", exc)
