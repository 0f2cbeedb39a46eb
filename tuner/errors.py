"""Exceptions raised inside a trial; re-exported from :mod:`tuner.objective` and :mod:`tuner`."""

from __future__ import annotations

__all__ = ["StopRequested", "TrialConfigError"]


class TrialConfigError(RuntimeError):
    """A trial's configuration cannot train (NaN/inf loss, out of device memory).

    It is a result of the search (that region of the space diverges), so the trial counts against
    ``n_trials``; ``optimize`` passes it to Optuna's ``catch`` so the study goes on.
    """


class StopRequested(Exception):
    """A stop was requested (cancel, SIGTERM); raised at an epoch boundary.

    The trial ends FAIL with system attr ``interrupted=True`` and does not count against ``n_trials``.
    """
