"""Where the test-score gap to scikit-learn comes from: pruner and initialisation, one at a time.

The peers part (8) compares ``tuner.run`` with scikit-learn's ``MLP*`` + ``RandomizedSearchCV`` on four
data sets. Here the same tuner spec (``bench.peers.sklearn_spec``: 20 trials, 5-fold in lockstep, at most
200 epochs, patience 10) runs with one change at a time, on the same seeds, in one process (``--jobs 1``:
every variant's search is deterministic per seed, so the variants differ only by the change):

- ``default``: the spec as in part 8 (successive halving with tuner's first rung,
  ``tuner.spec.default_min_resource``: 1/32 of the epoch budget, rungs at epochs 6, 24, 96);
- ``SH first rung 1``: successive halving with Optuna's ``min_resource='auto'``, which early stopping
  makes epoch 1 (rungs 1, 4, 16, 64): tuner's default before 2026-12-07;
- ``no pruner``: every trial runs until early stopping or the epoch budget;
- ``PyTorch default init`` (``model.init: "torch"``; the mission asks for He on ReLU layers):
  ``nn.Linear``'s own initialisation, about 6x smaller weight variance than He's;
- ``Glorot init`` (``model.init: "glorot"``): Xavier-uniform with gain 1 on every layer, scikit-learn's
  and Keras' default (about 3x smaller variance than He's on these layers).

Seeds 0..19 by default (``--seeds``): seeds 0-9 are the ones the first rung at epoch 6 was picked on,
10-19 check it on searches it was not picked on (both halves are reported). The scikit-learn scores are
read from bench/results/peers.json (its seeds, same rows). ``.venv/bin/python -m bench.sklearn_gap``
(about 50 minutes on one core; ``--only "Glorot init"`` re-runs the named variants and keeps the others'
figures from the last run); results in bench/results/sklearn_gap.json.
"""

from __future__ import annotations

import datetime as _dt
import json
import tempfile
from pathlib import Path
from typing import Any

from bench.common import RESULTS, banner, git_commit, parser, quiet_optuna, set_threads, table, write_result

DATASETS = ("digits", "diabetes", "breast_cancer")
VARIANTS = ("default", "SH first rung 1", "no pruner", "PyTorch default init", "Glorot init")
# seeds the default first rung was chosen on (bench/notes.md); the rest are held out
CHOSEN_ON = range(10)


def _spec(variant: str, ds: str, seed: int, n_trials: int, max_epochs: int) -> dict[str, Any]:
    from bench.peers import sklearn_spec

    d = sklearn_spec(ds, seed, n_trials, max_epochs)
    if variant == "no pruner":
        d["pruner"] = {"kind": "none"}
    elif variant == "SH first rung 1":
        d["pruner"] = {"kind": "successive_halving", "min_resource": "auto"}
    elif variant == "PyTorch default init":
        d["model"]["init"] = "torch"
    elif variant == "Glorot init":
        d["model"]["init"] = "glorot"
    return d


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=20, help="seeds 0..N-1")
    p.add_argument("--only", default=None, help="comma-separated variants to run; the others are kept from the "
                   "last run's JSON (same seeds)")
    args = p.parse_args()
    quiet_optuna()
    set_threads(1)
    import numpy as np

    from bench.peers import mean_se, tuner_run

    seeds = [0] if args.quick else list(range(args.seeds))
    n_trials, max_epochs = (4, 10) if args.quick else (20, 200)
    peers_file = RESULTS / "peers.json"
    sk_scores: dict[str, dict[int, float]] = {}
    if peers_file.is_file():
        sk = json.loads(peers_file.read_text()).get("sklearn", {})
        for ds in DATASETS:
            runs = (sk.get(ds) or {}).get("runs", {}).get("sklearn", [])
            sk_scores[ds] = {int(r["seed"]): float(r["test_score"]) for r in runs}
    banner(f"tuner vs scikit-learn: one change at a time, {n_trials} trials, 5-fold, seeds {seeds}, --jobs 1")
    only = [v.strip() for v in args.only.split(",")] if args.only else list(VARIANTS)
    if unknown := set(only) - set(VARIANTS):
        p.error(f"--only: unknown variants {sorted(unknown)}; choose from {list(VARIANTS)}")
    kept: dict[str, Any] = {}
    if args.only:
        last = json.loads((RESULTS / "sklearn_gap.json").read_text())
        if last["seeds"] != seeds or args.quick:
            p.error("--only needs a full last run on the same seeds")
        missing = [f"{ds}/{v}" for ds in DATASETS for v in VARIANTS
                   if v not in only and v not in last["datasets"].get(ds, {}).get("variants", {})]
        if missing:
            p.error(f"--only: the last run lacks {missing}; add them to --only")
        kept = {ds: o["variants"] for ds, o in last["datasets"].items()}
        for variants in kept.values():  # where each kept variant's figures come from
            for v in variants.values():
                v.setdefault("run", {"date": last["date"], "commit": last["commit"]})
    out: dict[str, Any] = {}
    for ds in DATASETS:
        key = "r2" if ds == "diabetes" else "accuracy"
        held = [i for i, s in enumerate(seeds) if s not in CHOSEN_ON]
        per: dict[str, Any] = {}
        for variant in VARIANTS:
            if variant not in only:
                if variant in kept.get(ds, {}):
                    per[variant] = kept[ds][variant]
                continue
            scores: list[float] = []
            epochs: list[int] = []
            for seed in seeds:
                with tempfile.TemporaryDirectory(prefix="bench-gap-") as tmp:
                    r = tuner_run(_spec(variant, ds, seed, n_trials, max_epochs),
                                  storage=f"sqlite:///{tmp}/gap.db", jobs=1, tmp=Path(tmp))
                scores.append(float(r["test_metrics"][key]))
                epochs.append(int(r.get("epochs") or 0))
                print(f"  {ds:<9} {variant:<22} seed={seed} test={scores[-1]:.4f} epochs={r.get('epochs')}",
                      flush=True)
            mean, se = mean_se(scores)
            sk = [sk_scores.get(ds, {}).get(s) for s in seeds]
            diffs = [a - b for a, b in zip(scores, sk, strict=True) if b is not None]
            d_mean, d_se = mean_se(diffs)
            per[variant] = {"scores": scores, "mean": mean, "se": se, "median": float(np.median(scores)),
                            "epochs": epochs, "median_epochs": float(np.median(epochs)),
                            "diff_vs_sklearn_mean": d_mean, "diff_vs_sklearn_se": d_se,
                            "run": {"date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
                                    "commit": git_commit()}}
        base = per["default"]
        for variant, v in per.items():  # paired against the default, on all seeds and on the held-out ones
            d_all = [a - b for a, b in zip(v["scores"], base["scores"], strict=True)]
            v["diff_vs_default_mean"], v["diff_vs_default_se"] = mean_se(d_all)
            v["diff_vs_default_held_out_mean"], v["diff_vs_default_held_out_se"] = mean_se([d_all[i] for i in held])
            v["epochs_vs_default"] = float(np.median(v["epochs"])) / max(1.0, base["median_epochs"])
        sk_vals = [v for s, v in sk_scores.get(ds, {}).items() if s in seeds]
        out[ds] = {"variants": per, "sklearn_mean": mean_se(sk_vals)[0] if sk_vals else None,
                   "sklearn_median": float(np.median(sk_vals)) if sk_vals else None}
    print(table(["data set", "variant", "mean", "se", "median", "- sklearn (mean)", "se", "- default", "held out",
                 "epochs / default"],
                [[ds, v, s["mean"], s["se"], s["median"], s["diff_vs_sklearn_mean"], s["diff_vs_sklearn_se"],
                  s["diff_vs_default_mean"], s["diff_vs_default_held_out_mean"], s["epochs_vs_default"]]
                 for ds, o in out.items() for v, s in o["variants"].items()], digits=4))
    write_result("sklearn_gap", {"seeds": seeds, "n_trials": n_trials, "max_epochs": max_epochs, "datasets": out},
                 quick=args.quick, no_write=args.no_write)


if __name__ == "__main__":
    main()
