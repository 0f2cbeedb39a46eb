"""Hyperparameter importances and Plotly figures of a job's search, from Optuna's own evaluators and plots.

Every figure is built from a bounded sample of the job's trials (:mod:`app.services.trial_sample`), so a
request costs about the same at 50 trials as at 50,000: the ``best`` complete trials plus the most
``recent`` ones; learning curves (``intermediate``) are capped in number and downsampled in length.
Importances are computed on at most :data:`IMPORTANCE_MAX_TRIALS` recent complete trials and cached per
(job, evaluator, number of complete trials).

Work per request is bounded in the number of dimensions too: ``slice`` and ``parallel_coordinate`` draw at
most :data:`MAX_PARAMS` parameters and ``contour`` at most :data:`MAX_CONTOUR_PARAMS` (so at most 10 pairs):
those the caller names (``?params=``), else the most important ones by PED-ANOVA (cheap, cached), the
figure saying which (``layout.meta``, the title). Figures are drawn by a :class:`PlotPool`: a few daemon
threads of their own, not the request threadpool that serves ``/healthz`` and the other routes, with a
bounded queue (full: 503 with ``Retry-After``) and a time budget per figure (over it the figure is stopped
and the answer is a 503 that says so). On shutdown the pool stops its figures and is not waited for.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import optuna
from optuna.importance import (
    BaseImportanceEvaluator,
    FanovaImportanceEvaluator,
    MeanDecreaseImpurityImportanceEvaluator,
    PedAnovaImportanceEvaluator,
)
from optuna.trial import FrozenTrial, TrialState

from app.errors import Conflict, FieldErrors, NotReady
from app.services.trial_sample import SampleLimits, count_complete, sample_study

if TYPE_CHECKING:
    import plotly.graph_objects as go

__all__ = [
    "EVALUATORS",
    "IMPORTANCE_MAX_TRIALS",
    "KINDS",
    "MAX_CONTOUR_PARAMS",
    "MAX_PARAMS",
    "MIN_COMPLETE_FOR_IMPORTANCE",
    "Evaluator",
    "PlotBusy",
    "PlotKind",
    "PlotPool",
    "figure",
    "importances",
    "plot_pool",
    "render",
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

MAX_PARAMS = 8  # dimensions of a slice or parallel-coordinate plot
MAX_CONTOUR_PARAMS = 5  # a contour plot draws every pair: 5 parameters, 10 pairs (5 x 5 panels)
PARAM_LIMITS: dict[str, int] = {"slice": MAX_PARAMS, "parallel_coordinate": MAX_PARAMS, "contour": MAX_CONTOUR_PARAMS}
RANK_EVALUATOR: Evaluator = "ped_anova"  # ranks the parameters when there are more than a plot draws (~0.2 s)

PLOT_WORKERS = 2  # figures drawn at once (threads of the plot pool, not the request threadpool)
PLOT_QUEUE = 8  # figures waiting for a worker; one more is a 503 with Retry-After
PLOT_BUDGET_S = 20.0  # one figure's time (fANOVA on 44 parameters x 300 trials: ~12 s); over it: stopped, 503
QUEUE_WAIT_S = 30.0  # a figure still waiting after this long is not drawn: 503 with Retry-After
RETRY_AFTER_S = 5

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


def _param_names(study: optuna.Study) -> list[str]:
    return sorted({p for t in study.get_trials(deepcopy=False) for p in t.params})


def parse_params(kind: str, raw: str | None) -> list[str] | None:
    """``?params=a,b,c`` -> the names (422 when the kind takes none or there are more than it draws)."""
    if raw is None:
        return None
    names = list(dict.fromkeys(p.strip() for p in raw.split(",") if p.strip()))
    limit = PARAM_LIMITS.get(kind)
    if limit is None:
        raise FieldErrors([(["query", "params"], (f"params: only the {', '.join(PARAM_LIMITS)} plots take "
                                                 f"parameters; not '{kind}'"))])
    if not names:
        raise FieldErrors([(["query", "params"], "params: name at least one parameter, comma-separated")])
    if len(names) > limit:
        raise FieldErrors([(["query", "params"], (f"params: a {kind} plot draws at most {limit} parameters; "
                                                 f"{len(names)} given"))])
    return names


def _choose(kind: str, study: optuna.Study, storage: optuna.storages.BaseStorage, job_id: str, study_name: str,
            asked: list[str] | None) -> tuple[list[str] | None, dict[str, Any]]:
    """The parameters one plot draws, and what to tell the caller about the choice."""
    names = _param_names(study)
    limit = PARAM_LIMITS[kind]
    if asked is not None:
        unknown = [p for p in asked if p not in names]
        if unknown:
            known = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
            raise FieldErrors([(["query", "params"], (f"params: no parameter {', '.join(map(repr, unknown))} in "
                                                     f"this job's trials (known: {known or 'none yet'})"))])
        return asked, {"params": asked, "params_total": len(names), "params_chosen_by": "request"}
    if len(names) <= limit:
        return None, {"params": names, "params_total": len(names), "params_chosen_by": "all"}
    by = "name"
    ranked = names
    try:
        imp = importances(storage, job_id, study_name, RANK_EVALUATOR)["importances"]
    except (Conflict, ArithmeticError, ValueError, RuntimeError):  # too few complete trials, nothing varies...
        pass  # (the ranking is a courtesy: then the first ones by name)
    else:
        ranked = sorted(names, key=lambda p: (-imp.get(p, -1.0), p))
        by = f"importance ({RANK_EVALUATOR})"
    chosen = sorted(ranked[:limit])
    return chosen, {"params": chosen, "params_total": len(names), "params_chosen_by": by}


def figure(kind: PlotKind, storage: optuna.storages.BaseStorage, job_id: str, study_name: str, *,
           evaluator: Evaluator = "fanova", params: list[str] | None = None) -> go.Figure:
    """The Plotly figure of one kind for the job, from ``optuna.visualization``.

    ``slice``, ``parallel_coordinate`` and ``contour`` draw ``params`` (at most :data:`PARAM_LIMITS`), by
    default the most important ones when the job has more; ``layout.meta`` says which and why."""
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
    if kind in PARAM_LIMITS:
        chosen, meta = _choose(kind, study, storage, job_id, study_name, params)
        draw: dict[str, Callable[..., go.Figure]] = {
            "parallel_coordinate": vis.plot_parallel_coordinate, "slice": vis.plot_slice, "contour": vis.plot_contour}
        try:
            fig = draw[kind](study, params=chosen)
        except ValueError as exc:
            raise Conflict(f"{kind} plot cannot be drawn: {exc}") from exc
        if meta["params_total"] > len(meta["params"]):
            title = fig.layout.title.text or kind
            how = {"request": "as asked"}.get(meta["params_chosen_by"], f"chosen by {meta['params_chosen_by']}")
            fig.update_layout(title=f"{title} ({len(meta['params'])} of {meta['params_total']} parameters, {how}; "
                                    "pick others with ?params=)")
        fig.update_layout(meta=meta)
        return fig
    plot: dict[str, Callable[[optuna.Study], go.Figure]] = {"history": _history, "edf": vis.plot_edf}
    try:
        return plot[kind](study)
    except ValueError as exc:
        raise Conflict(f"{kind} plot cannot be drawn: {exc}") from exc


def render(kind: PlotKind, storage: optuna.storages.BaseStorage, job_id: str, study_name: str,
           evaluator: Evaluator, params: list[str] | None, fmt: str) -> tuple[str, str, dict[str, Any] | None]:
    """``(body, media type, meta)``: the figure as Plotly JSON or a self-contained HTML page (in the pool)."""
    fig = figure(kind, storage, job_id, study_name, evaluator=evaluator, params=params)
    meta = fig.layout.meta if kind in PARAM_LIMITS else None
    if fmt == "html":
        return fig.to_html(include_plotlyjs=True, full_html=True), "text/html; charset=utf-8", meta
    return fig.to_json(), "application/json", meta


# ------------------------------------------------------------------------------------------- the pool
class PlotBusy(NotReady):
    """503 with ``Retry-After``: the plot pool's queue is full (or the figure waited too long for a worker)."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.headers = {"Retry-After": str(RETRY_AFTER_S)}


class _Interrupted(BaseException):
    """Raised inside a pool thread to stop the figure it draws (over budget, shutdown, caller gone)."""


def _async_raise(ident: int, exc: type[BaseException] | None) -> None:
    """Raise ``exc`` in thread ``ident`` at its next Python instruction (None: drop one not yet raised)."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), ctypes.py_object(exc) if exc else None)


@dataclass(eq=False)
class _Item:
    future: concurrent.futures.Future[Any]
    what: str
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    queued_at: float
    why: str | None = None  # why it was stopped: "budget", "shutdown" or "cancelled"


class PlotPool:
    """``await pool.compute("the contour plot", fn, *args)``: ``fn(*args)`` in one of ``workers`` daemon threads.

    At most ``queue`` calls wait (one more: :class:`PlotBusy`); a call running longer than ``budget_s`` is
    stopped (an exception raised in its thread at its next Python instruction) and answers 503; one that
    waited ``queue_wait_s`` for a thread is not run. :meth:`shutdown` stops everything at once and nothing
    waits for the threads (daemons), so the server exits within its grace. Threads start on demand and end
    after ``idle_s`` without work.
    """

    def __init__(self, *, workers: int | None = None, queue: int | None = None, budget_s: float | None = None,
                 queue_wait_s: float | None = None, idle_s: float = 30.0) -> None:
        self.workers = workers or PLOT_WORKERS
        self.queue = PLOT_QUEUE if queue is None else queue
        self.budget_s = budget_s or PLOT_BUDGET_S
        self.queue_wait_s = queue_wait_s or QUEUE_WAIT_S
        self.idle_s = idle_s
        self._cond = threading.Condition()
        self._waiting: deque[_Item] = deque()
        self._running: dict[int, _Item] = {}  # thread ident -> what it draws
        self._threads = self._idle = 0
        self._closed = False
        self.started = 0  # calls that began to run (for tests)

    def submit(self, what: str, fn: Callable[..., Any], *args: Any) -> concurrent.futures.Future[Any]:
        with self._cond:
            if self._closed:
                raise NotReady("the server is shutting down")
            if len(self._running) + len(self._waiting) >= self.workers + self.queue:
                raise PlotBusy(f"plots are busy ({len(self._running)} being drawn, {len(self._waiting)} waiting); "
                               f"retry in {RETRY_AFTER_S} s")
            item = _Item(concurrent.futures.Future(), what, fn, args, time.monotonic())
            self._waiting.append(item)
            if self._threads < self.workers and self._idle < len(self._waiting):
                self._threads += 1
                threading.Thread(target=self._work, name="plot-worker", daemon=True).start()
            self._cond.notify()
        return item.future

    async def compute(self, what: str, fn: Callable[..., Any], *args: Any) -> Any:
        future = self.submit(what, fn, *args)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:  # the caller is gone: stop the work too
            self.cancel(future)
            raise

    def cancel(self, future: concurrent.futures.Future[Any]) -> None:
        if future.cancel():
            return
        with self._cond:
            running = [(ident, item) for ident, item in self._running.items() if item.future is future]
        for ident, item in running:
            self._interrupt(ident, item, "cancelled")

    def shutdown(self) -> None:
        """Refuse new calls, fail the waiting ones and stop the running ones; does not wait for anything."""
        with self._cond:
            self._closed = True
            waiting = list(self._waiting)
            self._waiting.clear()
            running = list(self._running.items())
            self._cond.notify_all()
        for item in waiting:
            if item.future.set_running_or_notify_cancel():
                item.future.set_exception(NotReady("the server is shutting down"))
        for ident, item in running:
            self._interrupt(ident, item, "shutdown")

    @property
    def busy(self) -> tuple[int, int]:
        """``(running, waiting)``."""
        with self._cond:
            return len(self._running), len(self._waiting)

    # -- inside the pool's threads
    def _interrupt(self, ident: int, item: _Item, why: str) -> None:
        """Stop ``item``: its caller is answered now; its thread stops at its next Python instruction (a
        long C call ends first; the thread counts as busy until then)."""
        with self._cond:  # only while that thread still runs that item (see _leave)
            if self._running.get(ident) is not item:
                return
            item.why = item.why or why
            _async_raise(ident, _Interrupted)
        self._fail(item)

    def _next(self) -> _Item | None:
        with self._cond:
            deadline = time.monotonic() + self.idle_s
            while not self._waiting:
                remaining = deadline - time.monotonic()
                if self._closed or remaining <= 0:
                    self._threads -= 1
                    return None
                self._idle += 1
                try:
                    self._cond.wait(remaining)
                finally:
                    self._idle -= 1
            return self._waiting.popleft()

    def _work(self) -> None:
        ident = threading.get_ident()
        while True:
            try:
                item = self._next()
                if item is None:
                    return
                self._run(ident, item)
            except _Interrupted:  # arrived as the work ended: nothing left to stop
                continue

    def _run(self, ident: int, item: _Item) -> None:
        future = item.future
        if not future.set_running_or_notify_cancel():
            return
        if time.monotonic() - item.queued_at > self.queue_wait_s:
            future.set_exception(PlotBusy(f"{item.what} waited more than {self.queue_wait_s:g} s for a free "
                                          f"plot worker; retry in {RETRY_AFTER_S} s"))
            return
        with self._cond:
            if self._closed:
                future.set_exception(NotReady("the server is shutting down"))
                return
            self._running[ident] = item
            self.started += 1
        timer = threading.Timer(self.budget_s, self._interrupt, (ident, item, "budget"))
        timer.daemon = True
        timer.start()
        outcome: list[Any] = []  # [True, result] or [False, exception] (empty: interrupted)
        try:
            try:
                try:
                    outcome[:] = [True, item.fn(*item.args)]
                except _Interrupted:
                    pass
                except BaseException as exc:  # noqa: BLE001 (handed to the caller)
                    outcome[:] = [False, exc]
            finally:
                self._leave(ident, timer)
        except _Interrupted:  # raised between the work's end and _leave: the outcome stands
            pass
        if outcome and (outcome[0] or item.why is None):
            _settle(future, *outcome)
        else:
            self._fail(item)

    def _fail(self, item: _Item) -> None:
        """Answer the caller of a stopped item now, whether or not its thread has noticed yet."""
        if item.why == "budget":
            exc: BaseException = NotReady(
                f"{item.what} took longer than {self.budget_s:g} s and was stopped; draw fewer parameters "
                f"(?params=) or another kind")
        elif item.why == "shutdown":
            exc = NotReady("the server is shutting down")
        else:
            exc = concurrent.futures.CancelledError()
        _settle(item.future, False, exc)

    def _leave(self, ident: int, timer: threading.Timer) -> None:
        """No longer interruptible: out of ``_running`` (under the lock the interrupter takes) and any
        interrupt set but not yet raised dropped. Retried if one is raised meanwhile."""
        while True:
            try:
                timer.cancel()
                with self._cond:
                    self._running.pop(ident, None)
                    _async_raise(ident, None)
                return
            except _Interrupted:
                continue


def _settle(future: concurrent.futures.Future[Any], ok: bool, value: Any) -> None:
    """Set the outcome unless the caller was already answered (a stopped item that ended meanwhile)."""
    try:
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)
    except concurrent.futures.InvalidStateError:
        pass


_pool_lock = threading.Lock()


def plot_pool(state: Any) -> PlotPool:
    """The app's plot pool, kept on ``app.state`` (made on first use)."""
    pool: PlotPool | None = getattr(state, "plot_pool", None)
    if pool is None:
        with _pool_lock:
            pool = getattr(state, "plot_pool", None)
            if pool is None:
                pool = state.plot_pool = PlotPool()
    return pool
