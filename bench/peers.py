"""Part 8 - peers: ``tuner.run`` against what a user would write or pick instead, side by side in one run.

1. **Textbook Optuna script** (``DataLoader``, in-memory study, validation loss reported every epoch,
   ``MedianPruner()``, TPE seeded): digits MLP 128-64, 40 trials, <= 30 epochs, the example's search space,
   the same rows as tuner (train/validation/test). Against ``tuner.run`` on the same spec (pruner: median
   with Optuna's defaults, as the textbook script), in memory and on a SQLite file, ``--jobs 1`` and
   ``--jobs <cores>``. Targets: wall / textbook <= 0.5 (all cores), <= 0.8 with one job; test accuracy no
   worse than 0.5 points.
2. **scikit-learn** ``MLPClassifier``/``MLPRegressor`` + ``RandomizedSearchCV`` (20 candidates, 5-fold,
   all cores) on wine, breast_cancer, digits and diabetes, the same 80/20 test rows as tuner, versus
   ``tuner.run`` (20 trials, 5-fold, all cores, the spec's default pruner, at most 200 epochs per trial as
   scikit-learn's ``max_iter``). Targets: wall ratio <= 1.0 on
   each; tuner's test score >= scikit-learn's median over the seeds on at least 3 of 4.
3. **K-fold trial cost**: one 5-fold trial (lockstep) / one holdout trial of the same spec and params
   (breast_cancer; random sampler with the same seed, so both see the same params). Target <= 1.6x.
4. **Per-epoch engine overhead**: a 30-epoch digits trial through the objective (median pruner reading
   every epoch, SQLite file, the trial's Optuna bookkeeping and its scikit-learn metric set included)
   against a bare loop doing only forward/backward/step on the same batches plus, each epoch, the one
   forward pass of the validation rows that early stopping needs ("bare+val"). Target: overhead <= 10 %
   of the epoch. The overhead against training alone ("bare", no validation forward) is reported too, and
   the same trial on an in-memory study ("engine-memory": no SQLite transactions).

Every comparison is interleaved per seed: the K-fold cost and the overhead on 3 seeds, the textbook
comparison on 20 and the scikit-learn one on 10 (``--textbook-seeds``, ``--sklearn-seeds``): a search's
test accuracy moves by about a point from one seed to the next, so 3 seeds cannot tell a half-point gap
from luck. The textbook verdict is the mean paired difference over its seeds (with its standard error);
the median of the first 3 seeds is reported beside it. ``--quick``: 1 seed, smaller budgets.
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import (
    RESULTS,
    Timer,
    banner,
    load_example,
    median,
    parser,
    quiet_optuna,
    ratio,
    set_threads,
    table,
    write_result,
)

DATASETS = ("wine", "breast_cancer", "digits", "diabetes")


def cores() -> int:
    return len(os.sched_getaffinity(0))


# ------------------------------------------------------------------------------------- 1. textbook
def digits_spec(seed: int, n_trials: int, max_epochs: int) -> dict[str, Any]:
    d = copy.deepcopy(load_example("digits-mlp.json"))
    d["name"] = f"peers-digits-s{seed}"
    d["budget"] = {"n_trials": n_trials, "max_epochs": max_epochs, "timeout_s": None}
    d["pruner"] = {"kind": "median"}  # Optuna's defaults, as the textbook script
    d["sampler"] = {"kind": "tpe", "seed": seed}
    return d


def textbook(seed: int, n_trials: int, max_epochs: int) -> dict[str, Any]:
    """The script from Optuna's PyTorch example, on tuner's rows of the digits data."""
    import optuna
    import torch
    import torch.nn.functional as F
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    from tuner.data import prepare_data
    from tuner.spec import parse_spec

    data = prepare_data(parse_spec(digits_spec(seed, n_trials, max_epochs)))
    fold = data.folds[0]
    Xtr, ytr, Xva, yva = fold.X_train, fold.y_train, fold.X_val, fold.y_val
    test = data.take_test()
    Xte = torch.from_numpy(fold.preprocessor.transform(test.frame))
    yte = torch.from_numpy(np.asarray(test.y, dtype=np.int64))
    models: dict[int, nn.Module] = {}
    epochs = 0

    def objective(trial: optuna.Trial) -> float:
        nonlocal epochs
        lr = trial.suggest_float("lr", 1e-4, 3e-2, log=True)
        dropout = trial.suggest_float("dropout", 0.0, 0.5)
        batch_size = trial.suggest_categorical("batch_size", [32, 64, 128])
        weight_decay = trial.suggest_float("weight_decay", 1e-6, 1e-3, log=True)
        name = trial.suggest_categorical("optimizer", ["adam", "adamw"])
        model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Dropout(dropout),
                              nn.Linear(128, 64), nn.ReLU(), nn.Dropout(dropout), nn.Linear(64, 10))
        opt_cls = torch.optim.Adam if name == "adam" else torch.optim.AdamW
        optimizer = opt_cls(model.parameters(), lr=lr, weight_decay=weight_decay)
        loader = DataLoader(TensorDataset(Xtr, ytr), batch_size=batch_size, shuffle=True)
        val_loss = float("nan")
        for epoch in range(max_epochs):
            model.train()
            for xb, yb in loader:
                optimizer.zero_grad()
                loss = F.cross_entropy(model(xb), yb)
                loss.backward()
                optimizer.step()
            model.eval()
            with torch.no_grad():
                val_loss = F.cross_entropy(model(Xva), yva).item()
            epochs += 1
            trial.report(val_loss, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()
        models[trial.number] = model
        return val_loss

    with Timer() as t:
        torch.manual_seed(seed)
        study = optuna.create_study(direction="minimize", sampler=optuna.samplers.TPESampler(seed=seed),
                                    pruner=optuna.pruners.MedianPruner())
        study.optimize(objective, n_trials=n_trials)
        best = models[study.best_trial.number].eval()
        with torch.no_grad():
            acc = float((best(Xte).argmax(1) == yte).float().mean())
    return {"wall_s": round(t.s, 3), "epochs": epochs, "test_accuracy": acc}


def tuner_run(spec_dict: dict[str, Any], *, storage: str | None, jobs: int, tmp: Path) -> dict[str, Any]:
    """``tuner.run`` (one torch thread per process) -> wall, test metrics, epochs (when the study is readable)."""
    import optuna

    from tuner.runner import run
    from tuner.spec import parse_spec

    spec = parse_spec(spec_dict)
    with Timer() as t:
        result = run(spec, storage=storage, artifacts_dir=tmp / "art", progress=False, num_threads=1, jobs=jobs)
    out: dict[str, Any] = {"wall_s": round(t.s, 3), "test_metrics": result["test_metrics"],
                           "counted": result["counts"]["counted"]}
    if storage is not None:
        study = optuna.load_study(study_name=spec.name, storage=storage)
        out["epochs"] = sum(_epochs(tr.user_attrs.get("val_curve")) for tr in study.trials)
    return out


def _epochs(curve: Any) -> int:
    if not curve:
        return 0
    return sum(len(c) for c in curve) if isinstance(curve[0], list) else len(curve)


def part_textbook(seeds: list[int], n_trials: int, max_epochs: int, jobs: int) -> dict[str, Any]:
    banner(f"1. textbook Optuna script vs tuner.run: digits MLP, {n_trials} trials, <= {max_epochs} epochs")
    variants = ["textbook", "memory-j1", f"memory-j{jobs}", "sqlite-j1", f"sqlite-j{jobs}"]
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    # Untimed warm-up, as the textbook script runs in this already-warm process: first-call costs of each
    # variant, and the fork server of --jobs N (started once per Python process; a cold `tuner run --jobs N`
    # pays its 1-3 s once, overlapped with its own start-up by the CLI - see docs/BENCHMARKS.md).
    with tempfile.TemporaryDirectory(prefix="bench-peers-") as tmp:
        textbook(seeds[0], 2, 1)
        tuner_run(digits_spec(seeds[0], 2, 1), storage=None, jobs=jobs, tmp=Path(tmp))
        tuner_run(digits_spec(seeds[0], 2, 1), storage=f"sqlite:///{tmp}/w.db", jobs=1, tmp=Path(tmp))
    for i, seed in enumerate(seeds):
        order = variants[i % len(variants):] + variants[: i % len(variants)]
        for v in order:
            with tempfile.TemporaryDirectory(prefix="bench-peers-") as tmp:
                if v == "textbook":
                    r = textbook(seed, n_trials, max_epochs)
                else:
                    where, j = v.split("-j")
                    spec = digits_spec(seed, n_trials, max_epochs)
                    storage = None if where == "memory" else f"sqlite:///{tmp}/peers.db"
                    r = tuner_run(spec, storage=storage, jobs=int(j), tmp=Path(tmp))
                    r["test_accuracy"] = r["test_metrics"]["accuracy"]
            r["seed"] = seed
            runs[v].append(r)
            print(f"  seed={seed} {v:<12} wall={r['wall_s']:7.2f}s epochs={r.get('epochs', '-')!s:>5} "
                  f"test_acc={r['test_accuracy']:.4f}", flush=True)
    ref = {r["seed"]: r for r in runs["textbook"]}
    summary = {}
    for v in variants:
        rs = runs[v]
        points = [100 * (r["test_accuracy"] - ref[r["seed"]]["test_accuracy"]) for r in rs]
        mean, se = mean_se(points)
        summary[v] = {
            "median_wall_s": median(r["wall_s"] for r in rs),
            "median_epochs": median(r.get("epochs") for r in rs),
            "median_test_accuracy": median(r["test_accuracy"] for r in rs),
            "wall_ratio_vs_textbook": median(ratio(r["wall_s"], ref[r["seed"]]["wall_s"]) for r in rs),
            # the verdict: the paired difference's mean over every seed (one seed moves it by ~1 point)
            "test_points_vs_textbook": mean,
            "test_points_se": se,
            "test_points_median_first3": median(points[:3]),  # the 3-seed protocol, for reference
        }
    print(table(["variant", "wall s", "epochs", "test acc", "wall / textbook", "test pts vs textbook (mean)", "se"],
                [[v, s["median_wall_s"], s["median_epochs"], s["median_test_accuracy"], s["wall_ratio_vs_textbook"],
                  s["test_points_vs_textbook"], s["test_points_se"]] for v, s in summary.items()], digits=3))
    return {"variants": variants, "runs": runs, "summary": summary, "jobs": jobs, "seeds": seeds}


def mean_se(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and its standard error (None for the error with fewer than two values)."""
    if not values:
        return None, None
    arr = np.asarray(values, dtype=np.float64)
    se = float(arr.std(ddof=1) / np.sqrt(len(arr))) if len(arr) > 1 else None
    return float(arr.mean()), se


# -------------------------------------------------------------------------------------- 2. sklearn
def sklearn_spec(ds: str, seed: int, n_trials: int, max_epochs: int) -> dict[str, Any]:
    classification = ds != "diabetes"
    return {
        "name": f"peers-{ds}-s{seed}",
        "dataset": {"builtin": ds},
        "model": {"kind": "mlp", "hidden": [64], "activation": "relu"},
        "split": {"test_fraction": 0.2, "validation": {"kind": "kfold", "k": 5}, "seed": 0,
                  **({} if classification else {"stratify": None})},
        "search_space": {
            "lr": {"low": 1e-4, "high": 3e-2, "log": True},
            "batch_size": {"choices": [32, 64, 128]},
            "weight_decay": {"low": 1e-6, "high": 1e-3, "log": True},
            "hidden_units": {"choices": [32, 64, 128]},
            "n_layers": {"low": 1, "high": 2},
        },
        "objective": "val_loss",
        "budget": {"n_trials": n_trials, "max_epochs": max_epochs, "timeout_s": None},
        "early_stopping": {"patience": 10},  # as examples/digits-mlp.json (bench.choices: 5 costs accuracy)
        "sampler": {"kind": "tpe", "seed": seed},
    }


def sklearn_search(ds: str, seed: int, n_iter: int) -> dict[str, Any]:
    """StandardScaler + MLP in RandomizedSearchCV (5-fold, all cores) on tuner's dev/test rows."""
    from scipy.stats import loguniform
    from sklearn.compose import TransformedTargetRegressor
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.metrics import accuracy_score, r2_score
    from sklearn.model_selection import RandomizedSearchCV
    from sklearn.neural_network import MLPClassifier, MLPRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from tuner.data import load_dataset, prepare_data
    from tuner.spec import parse_spec

    spec = parse_spec(sklearn_spec(ds, seed, 1, 1))
    raw = load_dataset(spec.dataset)
    splits = prepare_data(spec).splits
    X = raw.frame.to_numpy(dtype=np.float64)
    y = np.asarray(raw.target)
    Xd, yd, Xt, yt = X[splits.dev], y[splits.dev], X[splits.test], y[splits.test]
    classification = ds != "diabetes"
    space = {
        "hidden_layer_sizes": [(32,), (64,), (128,), (32, 32), (64, 64), (128, 128)],
        "alpha": loguniform(1e-6, 1e-3),
        "learning_rate_init": loguniform(1e-4, 3e-2),
        "batch_size": [32, 64, 128],
    }
    if classification:
        est: Any = make_pipeline(StandardScaler(), MLPClassifier(random_state=seed))
        params = {f"mlpclassifier__{k}": v for k, v in space.items()}
    else:
        est = TransformedTargetRegressor(make_pipeline(StandardScaler(), MLPRegressor(random_state=seed)),
                                         transformer=StandardScaler())
        params = {f"regressor__mlpregressor__{k}": v for k, v in space.items()}
    search = RandomizedSearchCV(est, params, n_iter=n_iter, cv=5, random_state=seed, n_jobs=-1)
    with Timer() as t, warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.filterwarnings("ignore", message="Got `batch_size`")
        search.fit(Xd, yd)
        pred = search.predict(Xt)
    score = float(accuracy_score(yt, pred)) if classification else float(r2_score(yt, pred))
    return {"wall_s": round(t.s, 3), "test_score": score}


def part_sklearn(seeds: list[int], n_trials: int, max_epochs: int, jobs: int) -> dict[str, Any]:
    banner(f"2. scikit-learn MLP + RandomizedSearchCV vs tuner.run: {n_trials} trials, 5-fold, --jobs {jobs}")
    out: dict[str, Any] = {}
    for ds in DATASETS:
        runs: dict[str, list[dict[str, Any]]] = {"sklearn": [], "tuner": []}
        for i, seed in enumerate(seeds):
            for v in (["sklearn", "tuner"] if i % 2 == 0 else ["tuner", "sklearn"]):
                with tempfile.TemporaryDirectory(prefix="bench-peers-") as tmp:
                    if v == "sklearn":
                        r = sklearn_search(ds, seed, n_trials)
                    else:
                        r = tuner_run(sklearn_spec(ds, seed, n_trials, max_epochs),
                                      storage=f"sqlite:///{tmp}/peers.db", jobs=jobs, tmp=Path(tmp))
                        r["test_score"] = r["test_metrics"]["r2" if ds == "diabetes" else "accuracy"]
                r["seed"] = seed
                runs[v].append(r)
                print(f"  {ds:<14} seed={seed} {v:<8} wall={r['wall_s']:7.2f}s test={r['test_score']:.4f}",
                      flush=True)
        ref = {r["seed"]: r for r in runs["sklearn"]}
        sk_median = median(r["test_score"] for r in runs["sklearn"])
        tu_median = median(r["test_score"] for r in runs["tuner"])
        diff_mean, diff_se = mean_se([r["test_score"] - ref[r["seed"]]["test_score"] for r in runs["tuner"]])
        out[ds] = {
            "runs": runs,
            "sklearn_median_wall_s": median(r["wall_s"] for r in runs["sklearn"]),
            "tuner_median_wall_s": median(r["wall_s"] for r in runs["tuner"]),
            "wall_ratio": median(ratio(r["wall_s"], ref[r["seed"]]["wall_s"]) for r in runs["tuner"]),
            "sklearn_median_test": sk_median,
            "tuner_median_test": tu_median,
            "test_not_worse": bool(tu_median is not None and sk_median is not None and tu_median >= sk_median),
            "test_diff_mean": diff_mean,  # tuner - scikit-learn, paired per seed
            "test_diff_se": diff_se,
            "tuner_median_epochs": median(r.get("epochs") for r in runs["tuner"]),
        }
    print(table(["data set", "sklearn s", "tuner s", "tuner / sklearn", "sklearn test", "tuner test"],
                [[ds, s["sklearn_median_wall_s"], s["tuner_median_wall_s"], s["wall_ratio"], s["sklearn_median_test"],
                  s["tuner_median_test"]] for ds, s in out.items()], digits=3))
    return out


# ----------------------------------------------------------------------------------- 3. K-fold cost
def part_kfold_cost(seeds: list[int], n_trials: int) -> dict[str, Any]:
    import optuna

    from tuner.data import prepare_data
    from tuner.objective import Objective
    from tuner.runner import open_study, optimize
    from tuner.spec import parse_spec

    banner(f"3. K-fold (k=5, lockstep) trial cost vs holdout: breast_cancer, {n_trials} trials per seed")
    base = load_example("breast-cancer-kfold.yaml")
    variants = {"holdout": {"kind": "holdout", "fraction": 0.2}, "kfold": {"kind": "kfold", "k": 5},
                "kfold-sequential": {"kind": "kfold", "k": 5}}
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    # Untimed warm-up: one trial of each variant, so the first timed variant does not pay the process's
    # first-call costs (imports, kernels, Optuna's first study) for the others
    for v, validation in variants.items():
        d = copy.deepcopy(base)
        d["name"], d["split"] = f"warm-{v}", {**d["split"], "validation": validation}
        d["budget"] = {**d["budget"], "n_trials": 1, "timeout_s": None, "max_epochs": 3}
        spec = parse_spec(d)
        optimize(open_study(spec, None), Objective(spec, prepare_data(spec)), n_trials=1, timeout_s=None)
    for seed in seeds:
        for v, validation in variants.items():
            d = copy.deepcopy(base)
            d["name"] = f"cost-{v}-{seed}"
            d["split"] = {**d["split"], "validation": validation}
            d["pruner"] = {"kind": "none"}
            d["sampler"] = {"kind": "random", "seed": seed}
            d["budget"] = {**d["budget"], "n_trials": n_trials, "timeout_s": None}
            spec = parse_spec(d)
            objective = Objective(spec, prepare_data(spec))
            if v == "kfold-sequential":
                objective._kfold = objective._kfold_sequential  # type: ignore[method-assign]
            study = open_study(spec, None)
            with Timer() as t:
                optimize(study, objective, n_trials=n_trials, timeout_s=None)
            done = [tr for tr in study.trials if tr.state == optuna.trial.TrialState.COMPLETE]
            epochs = [_epochs(tr.user_attrs.get("val_curve")) for tr in done]
            runs[v].append({"seed": seed, "wall_s": round(t.s, 3), "per_trial_s": t.s / max(1, len(study.trials)),
                            "epochs": sum(epochs),
                            "max_fold_epochs": sum(max(len(c) for c in tr.user_attrs["val_curve"])
                                                   if v != "holdout" else len(tr.user_attrs["val_curve"])
                                                   for tr in done)})
            print(f"  seed={seed} {v:<17} wall={t.s:6.2f}s per trial={runs[v][-1]['per_trial_s']:.3f}s "
                  f"epochs={sum(epochs)}", flush=True)
    ref = {r["seed"]: r for r in runs["holdout"]}
    summary = {v: {"median_per_trial_s": median(r["per_trial_s"] for r in rs),
                   "ratio_vs_holdout": median(ratio(r["per_trial_s"], ref[r["seed"]]["per_trial_s"]) for r in rs),
                   "median_epochs": median(r["epochs"] for r in rs),
                   "median_lockstep_epochs": median(r["max_fold_epochs"] for r in rs)}
               for v, rs in runs.items()}
    print(table(["variant", "s per trial", "x holdout", "epochs (all folds)", "epochs (longest fold)"],
                [[v, s["median_per_trial_s"], s["ratio_vs_holdout"], s["median_epochs"], s["median_lockstep_epochs"]]
                 for v, s in summary.items()], digits=3))
    return {"runs": runs, "summary": summary}


# ------------------------------------------------------------------------------------ 4. overhead
def part_overhead(seeds: list[int], epochs: int) -> dict[str, Any]:
    import optuna
    import torch
    from torch import nn

    from tuner.data import prepare_data
    from tuner.models import build_model
    from tuner.objective import Objective
    from tuner.runner import open_study, optimize
    from tuner.spec import parse_spec
    from tuner.training import TrainConfig, make_optimizer

    banner(f"4. per-epoch engine overhead: digits MLP 128-64, batch 32, {epochs} epochs, SQLite file")
    d = digits_spec(0, 1, epochs)
    d["search_space"] = {"lr": {"value": 1e-3}, "batch_size": {"value": 32}, "dropout": {"value": 0.1},
                         "weight_decay": {"value": 1e-5}, "optimizer": {"value": "adam"}}
    d["early_stopping"] = {"patience": epochs + 1}
    d["pruner"] = {"kind": "median", "n_startup_trials": 1000}  # reads every epoch, never prunes
    spec = parse_spec(d)
    data = prepare_data(spec)
    fold = data.folds[0]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-peers-") as tmp:  # untimed warm-up (first-call costs)
        optimize(open_study(spec, f"sqlite:///{tmp}/w.db"), Objective(spec, data), n_trials=1, timeout_s=None)
    for i, seed in enumerate(seeds):
        order = ("engine", "bare", "engine-memory", "bare+val")
        for v in order[i % 4:] + order[: i % 4]:
            if v.startswith("engine"):
                with tempfile.TemporaryDirectory(prefix="bench-peers-") as tmp:
                    where = None if v == "engine-memory" else f"sqlite:///{tmp}/o.db"
                    study = open_study(spec, where, study_name=f"o{seed}")
                    objective = Objective(spec, data)
                    with Timer() as t:
                        optimize(study, objective, n_trials=1, timeout_s=None)
                    n_ep = _epochs(study.trials[0].user_attrs["val_curve"])
            else:
                torch.manual_seed(seed)
                g = torch.Generator().manual_seed(seed)
                params = {"lr": 1e-3, "batch_size": 32, "dropout": 0.1, "weight_decay": 1e-5, "optimizer": "adam"}
                model = build_model(spec.model, params, data.n_features, data.n_outputs)
                opt = make_optimizer(model, TrainConfig.from_params(params, spec))
                X, y = fold.X_train, fold.y_train
                Xv, yv = fold.X_val, fold.y_val
                with Timer() as t:
                    for _ in range(epochs):
                        model.train()
                        perm = torch.randperm(len(X), generator=g)
                        for s in range(0, len(X), 32):
                            idx = perm[s : s + 32]
                            opt.zero_grad(set_to_none=True)
                            nn.functional.cross_entropy(model(X[idx]), y[idx]).backward()
                            opt.step()
                        if v == "bare+val":  # the validation forward pass early stopping needs
                            model.eval()
                            with torch.inference_mode():
                                float(nn.functional.cross_entropy(model(Xv), yv))
                n_ep = epochs
            rows.append({"seed": seed, "variant": v, "wall_s": t.s, "epochs": n_ep, "per_epoch_s": t.s / n_ep})
            print(f"  seed={seed} {v:<13} {t.s:6.3f}s {n_ep} epochs, {1000 * t.s / n_ep:.2f} ms/epoch", flush=True)
    del optuna
    def per_epoch(seed: int, variant: str) -> float:
        return next(r["per_epoch_s"] for r in rows if r["seed"] == seed and r["variant"] == variant)

    summary = {
        "median_engine_ms_per_epoch": 1000 * median(r["per_epoch_s"] for r in rows if r["variant"] == "engine"),
        "median_bare_val_ms_per_epoch": 1000 * median(r["per_epoch_s"] for r in rows if r["variant"] == "bare+val"),
        "median_bare_ms_per_epoch": 1000 * median(r["per_epoch_s"] for r in rows if r["variant"] == "bare"),
        # the target: everything but forward (training and validation), backward and step
        "median_overhead_fraction": median(1 - per_epoch(s, "bare+val") / per_epoch(s, "engine") for s in seeds),
        "median_overhead_fraction_vs_training_only": median(
            1 - per_epoch(s, "bare") / per_epoch(s, "engine") for s in seeds),
        # the same trial on an in-memory study: the engine without Optuna's SQLite transactions
        "median_engine_memory_ms_per_epoch": 1000 * median(
            r["per_epoch_s"] for r in rows if r["variant"] == "engine-memory"),
        "median_overhead_fraction_memory": median(
            1 - per_epoch(s, "bare+val") / per_epoch(s, "engine-memory") for s in seeds),
    }
    print(summary)
    return {"runs": rows, "summary": summary}


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--only", default=None, help="comma-separated: textbook,sklearn,kfold_cost,overhead")
    p.add_argument("--jobs", type=int, default=None, help="tuner --jobs for the all-cores runs (default: cores)")
    p.add_argument("--textbook-seeds", type=int, default=20, help="seeds 0..N-1 of the textbook comparison")
    p.add_argument("--sklearn-seeds", type=int, default=10, help="seeds 0..N-1 of the scikit-learn comparison")
    args = p.parse_args()
    quiet_optuna()
    set_threads(args.threads)
    only = set(args.only.split(",")) if args.only else {"textbook", "sklearn", "kfold_cost", "overhead"}
    seeds = [0] if args.quick else [0, 1, 2]
    # The test-score comparisons need more seeds than the timings: one seed moves a search's test accuracy
    # by about a point (360 test rows), and the targets are half a point.
    textbook_seeds = seeds if args.quick else list(range(args.textbook_seeds))
    sklearn_seeds = seeds if args.quick else list(range(args.sklearn_seeds))
    jobs = args.jobs or cores()
    started = time.perf_counter()
    payload: dict[str, Any] = {"config": {"seeds": seeds, "textbook_seeds": textbook_seeds,
                                          "sklearn_seeds": sklearn_seeds, "jobs": jobs, "threads_per_process": 1}}
    if "overhead" in only:
        payload["overhead"] = part_overhead(seeds, 10 if args.quick else 30)
    if "kfold_cost" in only:
        payload["kfold_cost"] = part_kfold_cost(seeds, 3 if args.quick else 10)
    if "textbook" in only:
        payload["textbook"] = part_textbook(textbook_seeds, 8 if args.quick else 40, 10 if args.quick else 30, jobs)
    if "sklearn" in only:
        # tuner's epoch cap is scikit-learn's MLP max_iter (200): the same training budget per candidate;
        # early stopping (patience 10) and the pruner end most trials far sooner
        payload["sklearn"] = part_sklearn(sklearn_seeds, 4 if args.quick else 20, 10 if args.quick else 200, jobs)
    payload["total_s"] = round(time.perf_counter() - started, 1)
    previous = RESULTS / "peers.json"
    if args.only and not args.quick and previous.is_file():  # a partial re-run keeps the other parts' figures
        old = json.loads(previous.read_text())
        for part in ("textbook", "sklearn", "kfold_cost", "overhead"):
            if part not in payload and part in old:
                payload[part] = {**old[part], "from_run": old.get("date")}
    write_result("peers", payload, quick=args.quick, no_write=args.no_write)


if __name__ == "__main__":
    main()
