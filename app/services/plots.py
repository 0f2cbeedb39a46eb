"""Hyperparameter importances and Plotly figures of a job's search, from Optuna's own evaluators and plots.

Every figure is built from a bounded sample of the job's trials (:mod:`app.services.trial_sample`), so a
request costs about the same at 50 trials as at 50,000: the ``best`` complete trials plus the most
``recent`` ones; learning curves (``intermediate``) are capped in number and downsampled in length.
Importances are computed on at most :data:`IMPORTANCE_MAX_TRIALS` recent complete trials and cached per
(job, evaluator, number of complete trials).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

import optuna
from optuna.importance import (
    BaseImportanceEvaluator,
    FanovaImportanceEvaluator,
    MeanDecreaseImpurityImportanceEvaluator,
    PedAnovaImportanceEvaluator,
)
from optuna.trial import FrozenTrial, TrialState

from app.errors import Conflict
from app.services.trial_sample import SampleLimits, count_complete, sample_study

if TYPE_CHECKING:
    import plotly.graph_objects as go

__all__ = [
    "EVALUATORS",
    "IMPORTANCE_MAX_TRIALS",
    "KINDS",
    "MIN_COMPLETE_FOR_IMPORTANCE",
    "Evaluator",
    "PlotKind",
    "figure",
    "importances",
]

Evaluator = Literal["fanova", "ped_anova", "mean_decrease_impurity"]
PlotKind = Literal["history", "intermediate", "parallel_coordinate", "importance", "slice", "contour", "edf"]
KINDS: tuple[str, ...] = PlotKind.__args__  # type: ignore[attr-defined]

EVALUATORS: dict[str, Callable[[], BaseImportanceEvaluator]] = {
    "fanova": lambda: FanovaImportanceEvaluator(seed=0),
    "ped_anova": PedAnovaImportanceEvaluator,
    "mean_decrease_impurity": lambda: MeanDecreaseImpurityImportanceEvaluator(seed=0),
}
MIN_COMPLETE_FOR_IMPORTANCE = 3
IMPORTANCE_MAX_TRIALS = 300  # fANOVA: ~4 s on 300 trials on one core, ~14 s on 1,000; cached afterwards

PLOT_SAMPLE = SampleLimits(best=200, recent=300)
CURVE_SAMPLE = SampleLimits(best=30, recent=70, max_steps=60)  # at most 100 learning curves of 60 points
IMPORTANCE_SAMPLE = SampleLimits(best=0, recent=IMPORTANCE_MAX_TRIALS, states=("COMPLETE",))

PRUNED_COLOR = "#9e9e9e"

_cache: OrderedDict[tuple[str, str, int], dict[str, float]] = OrderedDict()
_cache_lock = threading.Lock()
_CACHE_SIZE = 256


class _Precomputed(BaseImportanceEvaluator):
    """Hands cached importances to ``optuna.visualization.plot_param_importances``."""

    def __init__(self, values: dict[str, float]) -> None:
        self.values = values

    def evaluate(self, study: optuna.Study, params: list[str] | None = None, *,
                 target: Callable[[FrozenTrial], float] | None = None) -> dict[str, float]:
        return dict(self.values)


def importances(storage: optuna.storages.BaseStorage, job_id: str, study_name: str,
                evaluator: Evaluator = "fanova") -> dict[str, Any]:
    """``{"evaluator", "n_complete", "n_used", "importances": {param: share}}``, largest first.

    Raises :class:`Conflict` (409) while fewer than :data:`MIN_COMPLETE_FOR_IMPORTANCE` trials are complete.
    """
    n_complete = count_complete(storage, study_name)
    if n_complete < MIN_COMPLETE_FOR_IMPORTANCE:
        raise Conflict(f"importance needs at least {MIN_COMPLETE_FOR_IMPORTANCE} complete trials; "
                       f"{n_complete} so far")
    key = (job_id, evaluator, n_complete)
    with _cache_lock:
        cached = _cache.get(key)
        if cached is not None:
            _cache.move_to_end(key)
    if cached is None:
        study = sample_study(storage, study_name, IMPORTANCE_SAMPLE)
        assert study is not None  # it has complete trials
        try:
            cached = optuna.importance.get_param_importances(study, evaluator=EVALUATORS[evaluator]())
        except (RuntimeError, ValueError) as exc:  # e.g. no parameter varies
            raise Conflict(f"importance cannot be computed: {exc}") from exc
        cached = {k: float(v) for k, v in cached.items()}
        with _cache_lock:
            _cache[key] = cached
            while len(_cache) > _CACHE_SIZE:
                _cache.popitem(last=False)
    return {"evaluator": evaluator, "n_complete": n_complete, "n_used": min(n_complete, IMPORTANCE_MAX_TRIALS),
            "importances": cached}


def _empty_study() -> optuna.Study:
    return optuna.create_study(storage=optuna.storages.InMemoryStorage())


def _mark_pruned(fig: go.Figure, study: optuna.Study) -> go.Figure:
    pruned = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.PRUNED,))}
    for trace in fig.data:
        name = str(trace.name or "")
        if name.startswith("Trial") and name[5:].isdigit() and int(name[5:]) in pruned:
            trace.update(name=f"{name} (pruned)", line={"dash": "dot", "color": PRUNED_COLOR},
                         marker={"color": PRUNED_COLOR, "symbol": "x"})
    fig.update_layout(title="Learning curves (validation objective per epoch; dotted grey: pruned)")
    return fig


def _history(study: optuna.Study) -> go.Figure:
    """Optuna's history plot indexes values by trial number (it assumes 0..n-1): plot a renumbered copy,
    then put the sampled trials' real numbers back on the x axis."""
    trials = study.get_trials(deepcopy=False)
    numbers = [t.number for t in trials]
    compact = optuna.create_study(directions=study.directions, storage=optuna.storages.InMemoryStorage())
    compact.add_trials(trials)  # numbered 0..k-1 in the same order
    fig = optuna.visualization.plot_optimization_history(compact)
    for trace in fig.data:
        if trace.x is not None:
            trace.x = [numbers[int(x)] for x in trace.x]
    return fig


def figure(kind: PlotKind, storage: optuna.storages.BaseStorage, job_id: str, study_name: str, *,
           evaluator: Evaluator = "fanova") -> go.Figure:
    """The Plotly figure of one kind for the job, from ``optuna.visualization``."""
    vis = optuna.visualization
    if kind == "importance":
        imp = importances(storage, job_id, study_name, evaluator)["importances"]
        # The values are cached; the plot only needs a study with a complete trial to pass them through.
        study = sample_study(storage, study_name, SampleLimits(best=1, recent=0)) or _empty_study()
        return vis.plot_param_importances(study, evaluator=_Precomputed(imp))
    if kind == "intermediate":
        study = sample_study(storage, study_name, CURVE_SAMPLE) or _empty_study()
        return _mark_pruned(vis.plot_intermediate_values(study), study)
    study = sample_study(storage, study_name, PLOT_SAMPLE) or _empty_study()
    plot: dict[str, Callable[[optuna.Study], go.Figure]] = {
        "history": _history,
        "parallel_coordinate": vis.plot_parallel_coordinate,
        "slice": vis.plot_slice,
        "contour": vis.plot_contour,
        "edf": vis.plot_edf,
    }
    try:
        return plot[kind](study)
    except ValueError as exc:
        raise Conflict(f"{kind} plot cannot be drawn: {exc}") from exc
