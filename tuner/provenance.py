"""What a result depends on besides its spec: package versions and a fingerprint of the loaded data."""

from __future__ import annotations

import hashlib
import platform
import shlex
from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import numpy as np
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from tuner.data import RawData
from tuner.objective import FOLD_SEED_STRIDE
from tuner.spec import JobSpec

__all__ = ["REPRODUCE_STORAGE", "dataset_fingerprint", "package_versions", "reproduction", "seeds",
           "split_recipe"]

_PACKAGES = {"torch": "torch", "optuna": "optuna", "scikit-learn": "scikit-learn", "numpy": "numpy",
             "pandas": "pandas", "tuneserve": "tuneserve"}


def package_versions() -> dict[str, str | None]:
    """Python and the versions of the packages a result depends on (``None`` when not installed)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for key, dist in _PACKAGES.items():
        try:
            out[key] = version(dist)
        except PackageNotFoundError:
            out[key] = None
    out["platform"] = platform.platform(terse=True)
    return out


def dataset_fingerprint(raw: RawData, task: str | None = None) -> dict[str, Any]:
    """sha256 of the loaded data (column names, then every column's values, then the target), its size and,
    for classification, the class counts. It identifies the *arrays* (e.g. a scikit-learn builtin), not a
    file: numeric columns hash as little-endian float64, others as their strings."""
    digest = hashlib.sha256()
    digest.update("\x1f".join(map(str, raw.frame.columns)).encode())
    for col in [*raw.frame.columns, None]:
        s = pd.Series(raw.target) if col is None else raw.frame[col]
        digest.update(b"\x1e")
        if pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s):
            digest.update(np.ascontiguousarray(s.to_numpy(dtype="<f8", na_value=np.nan)).tobytes())
        else:
            digest.update("\x1f".join("" if pd.isna(v) else str(v) for v in s).encode())
    out: dict[str, Any] = {"sha256": digest.hexdigest(), "rows": len(raw.frame), "columns": raw.frame.shape[1],
                           "class_counts": None}
    if task == "classification":
        counts = pd.Series(raw.target).astype(str).value_counts(sort=False)
        out["class_counts"] = {str(k): int(v) for k, v in sorted(counts.items(), key=lambda kv: str(kv[0]))}
    return out


def split_recipe(spec: JobSpec, task: str) -> dict[str, Any]:
    """How :func:`tuner.data.split_indices` splits the rows, in words and numbers (all fixed by ``split.seed``)."""
    split = spec.split
    stratify = split.stratify if split.stratify is not None else task == "classification"
    by = ", stratify=y" if stratify else ""
    val = split.validation
    if val.kind == "kfold":
        validation = (f"{'StratifiedKFold' if stratify else 'KFold'}(n_splits={val.k}, shuffle=True, "
                      f"random_state={split.seed}) on the non-test rows")
    else:
        validation = f"train_test_split(test_size={val.fraction}, random_state={split.seed}{by}) of the non-test rows"
    return {
        "test_fraction": split.test_fraction,
        "validation": val.model_dump(mode="json"),
        "stratify": stratify,
        "seed": split.seed,
        "test": f"sklearn.model_selection.train_test_split(test_size={split.test_fraction}, "
                f"random_state={split.seed}{by}), first, on all rows",
        "validation_method": validation,
    }


def seeds(spec: JobSpec, best_trial: int | None) -> dict[str, Any]:
    """Every seed a job's result depends on. A trial's model is built after ``torch.manual_seed(s)`` and
    its batches are shuffled by ``torch.Generator().manual_seed(s)`` with ``s = split.seed + number``
    (K-fold: ``+ 7919 * fold``); the final model uses the best trial's seed."""
    out: dict[str, Any] = {"split": spec.split.seed, "sampler": spec.sampler.seed}
    if best_trial is not None:
        base = spec.split.seed + best_trial
        out["best_trial"] = base
        if spec.split.validation.kind == "kfold":
            out["best_trial_folds"] = [base + FOLD_SEED_STRIDE * i for i in range(spec.split.validation.k)]
        out["final_model"] = base
    return out


REPRODUCE_STORAGE = "sqlite:///reproduce.db"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def reproduction(
    spec: JobSpec,
    trials: Sequence[FrozenTrial],
    study_attrs: dict[str, Any],
    *,
    study_name: str,
    not_finished: str | None = None,
    spec_file: str = "spec.json",
    storage: str = REPRODUCE_STORAGE,
) -> dict[str, Any]:
    """The ``tuner run`` command that repeats a finished search, and whether it repeats it exactly.

    ``{"command", "argv", "exact", "why"}``. The command runs the search in one process (``--jobs 1``)
    with the torch thread count and device the trials ran with (system attr ``torch_threads``, user attr
    ``device``), the same study name, on a fresh storage file. Exact means: same trials, same best
    parameters, same test metrics (same package versions and CPU; another BLAS build can move the last
    digits). It holds when ONE process ran every trial, one after another, from a fresh study: every
    trial carries the same ``worker`` and the same ``sampler_seed`` (the one a fresh ``tuner run`` gets),
    no two trials overlap in time, none was interrupted, lost or retried, all ran on the CPU with one
    thread count (the test scoring too), the whole ``n_trials`` budget ran and the test set was scored once.
    A search run by several workers or ``--jobs`` processes, resumed, or cut short by its time budget
    depends on timing: the command then gives the same trial count and scores the test set once, but other
    trials and another best trial. ``not_finished`` says why the search did not end normally (a failed or
    cancelled job).
    """
    from tuner.runner import sampler_seed

    trials = sorted(trials, key=lambda t: t.number)
    reasons: list[str] = []
    if not_finished:
        reasons.append(not_finished)
    if spec.sampler.seed is None:
        reasons.append("the spec's sampler has no seed, so every run samples other parameters (set sampler.seed)")
    if not trials:
        reasons.append("no trial ran")
    lost = [t.number for t in trials
            if t.state in (TrialState.RUNNING, TrialState.WAITING)
            or (t.state == TrialState.FAIL and t.system_attrs.get("failure") != "config")]
    if lost:
        reasons.append(f"{_plural(len(lost), 'trial')} did not end on their own (interrupted, lost with their "
                       f"worker, retried or still running: #{', #'.join(map(str, lost[:10]))})")
    workers = Counter(str(t.user_attrs.get("worker")) for t in trials)
    if len(workers) > 1:
        reasons.append(f"its trials were run by {len(workers)} workers/processes ({', '.join(sorted(workers)[:5])}): "
                       "which trial sees which results depends on timing")
    seeds_seen = {t.system_attrs.get("sampler_seed") for t in trials}
    fresh = sampler_seed(spec.sampler.seed, None, 0) if spec.sampler.seed is not None else None
    if fresh is not None and trials:
        if None in seeds_seen:
            reasons.append("not every trial recorded its sampler seed")
        elif len(seeds_seen) > 1:
            reasons.append(f"the sampler was seeded {len(seeds_seen)} times (a resume, a restarted worker or a "
                           "second worker)")
        elif seeds_seen != {fresh}:
            reasons.append(f"the sampler seed {next(iter(seeds_seen))} is not the one a fresh run gets ({fresh}): "
                           "the study was resumed or run by a second process")
    overlapping = _overlapping(trials)
    if overlapping:
        reasons.append(f"trials ran at the same time (#{overlapping[0]} and #{overlapping[1]})")
    scored = study_attrs.get("scored_with") or {}
    devices = {str(t.user_attrs.get("device")) for t in trials if t.user_attrs.get("device") is not None}
    if scored.get("device"):
        devices.add(str(scored["device"]))
    not_cpu = sorted(d for d in devices if d != "cpu")
    device = "cpu" if not not_cpu else ("cuda" if any(d.startswith("cuda") for d in not_cpu) else "auto")
    if not_cpu:
        reasons.append(f"it ran on {', '.join(not_cpu)}: GPU kernels are not bitwise reproducible")
    threads_seen = Counter(t.system_attrs.get("torch_threads") for t in trials)
    if scored.get("torch_threads") is not None:
        threads_seen[scored["torch_threads"]] += 1
    known = [n for n, _ in threads_seen.most_common() if isinstance(n, int)]
    threads = known[0] if known else 1
    if None in threads_seen and trials:
        reasons.append(f"the torch thread count was not recorded (a job from an older version): --threads {threads} "
                       "is a guess")
    elif len(known) > 1:
        reasons.append(f"trials ran with different torch thread counts ({', '.join(map(str, sorted(known)))})")
    counted = sum(1 for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
                  or (t.state == TrialState.FAIL and t.system_attrs.get("failure") == "config"))
    if trials and counted < spec.budget.n_trials and not not_finished:
        reasons.append(f"the search stopped after {counted} of {spec.budget.n_trials} trials (time budget)")
    scorings = int(study_attrs.get("test_scoring_count") or len(study_attrs.get("test_scored_trials") or []))
    if scorings > 1:
        reasons.append(f"the test set was scored {scorings} times (a resume with --rescore-test)")
    argv = ["tuner", "run", spec_file, "--jobs", "1", "--threads", str(threads), "--device", device,
            "--storage", storage, "--study-name", study_name]
    if reasons:
        why = ("Not exactly: " + "; ".join(reasons) + ". The command runs the same search in one process: the same "
               "trial count and one test scoring, but other sampled parameters, another best trial and test score.")
    else:
        seed = next(iter(seeds_seen)) if seeds_seen else None
        why = (f"One process ran all {_plural(len(trials), 'trial')} one after another from a fresh study (sampler "
               f"seed {seed}, {_plural(threads, 'torch thread')}, {device}): the command repeats the same trials, best "
               "parameters and test metrics, given the same package versions (another CPU or BLAS build can change "
               "the last digits). Run it on a fresh storage (delete reproduce.db first).")
    return {"command": shlex.join(argv), "argv": argv, "exact": not reasons, "why": why}


def _overlapping(trials: Sequence[FrozenTrial]) -> tuple[int, int] | None:
    """Two trials whose run times overlap (one started before the other ended), or ``None``."""
    timed = sorted(((t.datetime_start, t.datetime_complete, t.number) for t in trials if t.datetime_start is not None),
                   key=lambda x: (x[0], x[2]))
    end_number: tuple[datetime, int] | None = None  # the latest end so far, and whose
    for start, end, number in timed:
        if end_number is not None and start < end_number[0]:
            return end_number[1], number
        if end is None:  # still running (or lost): everything after it overlaps it
            end = datetime.max
        if end_number is None or end > end_number[0]:
            end_number = (end, number)
    return None
