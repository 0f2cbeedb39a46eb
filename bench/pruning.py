"""Part 1 - pruning: epochs trained, wall time, best validation value and test accuracy per pruner.

Holdout: the digits MLP example (40 trials, max 30 epochs, early stopping as shipped: patience 5), pruner
``none`` vs ``median`` vs ``successive_halving`` vs ``hyperband``, one in-memory study per (pruner, seed);
the sampler seed varies, the data split does not. K-fold: the breast-cancer 5-fold example with fewer
trials, ``none`` vs ``wilcoxon`` (and ``median``, as the example ships it). Runs are interleaved: for each
seed every pruner runs once, in a rotated order. Test accuracy comes from ``finalize`` once per run.

Target: >= 3x fewer epochs than ``none`` for <= 0.5 points of test accuracy lost.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any

from bench.common import (
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

HOLDOUT_PRUNERS: dict[str, dict[str, Any]] = {
    "none": {"kind": "none"},
    # As examples/digits-mlp.json ships it.
    "median": {"kind": "median", "n_startup_trials": 5, "n_warmup_steps": 5},
    # Optuna defaults (min_resource "auto", reduction_factor 4).
    "successive_halving": {"kind": "successive_halving"},
    # max_resource = the epoch budget (Optuna's "auto" would take the first trial's early-stopped length).
    "hyperband": {"kind": "hyperband", "min_resource": 1, "max_resource": 30},
}
KFOLD_PRUNERS: dict[str, dict[str, Any]] = {
    "none": {"kind": "none"},
    "wilcoxon": {"kind": "wilcoxon"},  # Optuna defaults (p_threshold 0.1, n_startup_steps 2); sequential folds
    # The rest train the folds in lockstep and report the mean over folds every epoch.
    "median": {"kind": "median", "n_startup_trials": 5, "n_warmup_steps": 1},
    "successive_halving": {"kind": "successive_halving"},
    "hyperband": {"kind": "hyperband", "min_resource": 1, "max_resource": 30},
}


def epochs_trained(trial: Any) -> int:
    """Epochs a trial trained: the length of its per-epoch validation curve(s) (K-fold: summed over folds)."""
    curve = trial.user_attrs.get("val_curve") or []
    if curve and isinstance(curve[0], list):
        return sum(len(c) for c in curve)
    return len(curve)


def run_one(spec_dict: dict[str, Any], n_trials: int, artifacts: Path) -> dict[str, Any]:
    from tuner.runner import Objective, finalize, open_study, optimize, prepare_data, trial_counts
    from tuner.spec import parse_spec

    spec = parse_spec(spec_dict)
    data = prepare_data(spec)
    study = open_study(spec, None)
    objective = Objective(spec, data)
    with Timer() as t:
        optimize(study, objective, n_trials=n_trials, timeout_s=None)
    counts = trial_counts(study)
    test = finalize(study, spec, data, artifacts_dir=artifacts)
    return {
        "wall_s": round(t.s, 3),
        "epochs": sum(epochs_trained(tr) for tr in study.trials),
        "best_value": float(study.best_value),
        "test_accuracy": test.get("accuracy"),
        "test_roc_auc": test.get("roc_auc"),
        "complete": counts.complete,
        "pruned": counts.pruned,
        "failed": counts.failed + counts.config_failed,
        "test_access_count": data.test_access_count,
    }


def warm_up(base: dict[str, Any]) -> None:
    """One tiny untimed run so imports and first-call costs do not land on the first timed run."""
    d = copy.deepcopy(base)
    d["name"] = "warm-up"
    d["budget"] = {**d["budget"], "n_trials": 2, "max_epochs": 2, "timeout_s": None}
    with tempfile.TemporaryDirectory(prefix="bench-warmup-") as tmp:
        run_one(d, 2, Path(tmp))


def run_set(
    label: str, base: dict[str, Any], pruners: dict[str, dict[str, Any]], seeds: list[int], n_trials: int,
    max_epochs: int,
) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in pruners}
    names = list(pruners)
    with tempfile.TemporaryDirectory(prefix="bench-pruning-") as tmp:
        for i, seed in enumerate(seeds):
            order = names[i % len(names):] + names[: i % len(names)]  # rotate so no pruner always runs first
            for name in order:
                d = copy.deepcopy(base)
                d["name"] = f"{label}-{name}-s{seed}"
                d["budget"] = {**d["budget"], "n_trials": n_trials, "max_epochs": max_epochs, "timeout_s": None}
                d["pruner"] = pruners[name]
                d["sampler"] = {"kind": "tpe", "seed": seed}
                r = run_one(d, n_trials, Path(tmp))
                r["seed"] = seed
                runs[name].append(r)
                print(f"  {label} seed={seed} {name:<18} epochs={r['epochs']:>5} wall={r['wall_s']:7.2f}s "
                      f"best={r['best_value']:.4f} test_acc={r['test_accuracy']:.4f} pruned={r['pruned']}",
                      flush=True)
    return summarise(runs, direction=base_direction(base))


def base_direction(base: dict[str, Any]) -> str:
    from tuner.spec import METRIC_DIRECTIONS

    return METRIC_DIRECTIONS[base.get("objective", "val_loss")][0]


def summarise(runs: dict[str, list[dict[str, Any]]], direction: str) -> dict[str, Any]:
    ref = runs["none"]
    ref_by_seed = {r["seed"]: r for r in ref}
    summary: dict[str, Any] = {}
    for name, rs in runs.items():
        med_epochs = median(r["epochs"] for r in rs)
        med_acc = median(r["test_accuracy"] for r in rs)
        # Paired by seed: how many times fewer epochs, and test accuracy points lost, than no pruning.
        paired_ratio = median(ratio(ref_by_seed[r["seed"]]["epochs"], r["epochs"]) for r in rs)
        paired_wall = median(ratio(ref_by_seed[r["seed"]]["wall_s"], r["wall_s"]) for r in rs)
        paired_loss = median(
            100.0 * (ref_by_seed[r["seed"]]["test_accuracy"] - r["test_accuracy"]) for r in rs
        )
        summary[name] = {
            "median_epochs": med_epochs,
            "median_wall_s": median(r["wall_s"] for r in rs),
            "median_best_value": median(r["best_value"] for r in rs),
            "median_test_accuracy": med_acc,
            "median_test_roc_auc": median(r["test_roc_auc"] for r in rs),
            "median_pruned": median(r["pruned"] for r in rs),
            "epoch_reduction_vs_none": paired_ratio,
            "wall_speedup_vs_none": paired_wall,
            "test_acc_points_lost_vs_none": paired_loss,
            "meets_target": (
                None if name == "none" else bool(paired_ratio is not None and paired_ratio >= 3.0
                                                  and paired_loss is not None and paired_loss <= 0.5)
            ),
        }
    return {"direction": direction, "runs": runs, "summary": summary}


def print_summary(title: str, res: dict[str, Any]) -> None:
    banner(title)
    rows = []
    for name, s in res["summary"].items():
        rows.append([
            name, s["median_epochs"], s["epoch_reduction_vs_none"], s["median_wall_s"], s["wall_speedup_vs_none"],
            s["median_best_value"], s["median_test_accuracy"], s["test_acc_points_lost_vs_none"],
            s["median_pruned"], s["meets_target"],
        ])
    print(table(["pruner", "epochs", "x fewer", "wall s", "x faster", "best val", "test acc", "pts lost",
                 "pruned", "target"], rows, digits=4))


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=None)
    args = p.parse_args()
    quiet_optuna()
    set_threads(args.threads)
    seeds = list(range(args.seeds if args.seeds else (1 if args.quick else 3)))
    hold_trials, hold_epochs = (12, 10) if args.quick else (40, 30)
    kfold_trials, kfold_epochs = (6, 10) if args.quick else (20, 30)
    holdout_pruners = copy.deepcopy(HOLDOUT_PRUNERS)
    holdout_pruners["hyperband"]["max_resource"] = hold_epochs
    kfold_pruners = copy.deepcopy(KFOLD_PRUNERS)
    kfold_pruners["hyperband"]["max_resource"] = kfold_epochs

    digits = load_example("digits-mlp.json")
    warm_up(digits)
    banner(f"holdout: digits MLP, {hold_trials} trials, max {hold_epochs} epochs, seeds {seeds}")
    holdout = run_set("digits", digits, holdout_pruners, seeds, hold_trials, hold_epochs)
    print_summary("holdout (digits MLP, objective val_loss; medians over seeds)", holdout)

    bc = load_example("breast-cancer-kfold.yaml")
    banner(f"K-fold: breast_cancer k=5, {kfold_trials} trials, max {kfold_epochs} epochs, seeds {seeds}")
    kfold = run_set("bc", bc, kfold_pruners, seeds, kfold_trials, kfold_epochs)
    print_summary("K-fold (breast_cancer, k=5, objective roc_auc; medians over seeds)", kfold)

    write_result("pruning", {
        "config": {
            "threads": args.threads, "seeds": seeds,
            "holdout": {"spec": "examples/digits-mlp.json", "n_trials": hold_trials, "max_epochs": hold_epochs,
                        "pruners": holdout_pruners},
            "kfold": {"spec": "examples/breast-cancer-kfold.yaml", "n_trials": kfold_trials,
                      "max_epochs": kfold_epochs, "pruners": kfold_pruners},
            "target": ">= 3x fewer epochs than none, <= 0.5 test-accuracy points lost (paired by seed, median)",
        },
        "holdout": holdout,
        "kfold": kfold,
    }, quick=args.quick, no_write=args.no_write)


if __name__ == "__main__":
    main()
