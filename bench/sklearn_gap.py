"""Where the test-score gap to scikit-learn comes from: pruner and initialisation, one at a time.

The peers part (8) compares ``tuner.run`` with scikit-learn's ``MLP*`` + ``RandomizedSearchCV`` on four
data sets (digits, diabetes, breast_cancer, wine). Here the same tuner spec (``bench.peers.sklearn_spec``:
20 trials, 5-fold in lockstep, at most 200 epochs, patience 10) runs on those four with one change at a
time, on the same seeds, in one process (``--jobs 1``: every variant's search is deterministic per seed,
so the variants differ only by the change):

- ``default``: the spec as in part 8 (successive halving with tuner's first rung,
  ``tuner.spec.default_min_resource``: 1/32 of the epoch budget, rungs at epochs 6, 24, 96);
- ``SH first rung 1``: successive halving with Optuna's ``min_resource='auto'``, which early stopping
  makes epoch 1 (rungs 1, 4, 16, 64): tuner's default before 2026-12-07;
- ``no pruner``: every trial runs until early stopping or the epoch budget;
- ``PyTorch default init`` (``model.init: "torch"``; the mission asks for He on ReLU layers):
  ``nn.Linear``'s own initialisation, about 6x smaller weight variance than He's;
- ``Glorot init`` (``model.init: "glorot"``): Xavier-uniform with gain 1 on every layer, scikit-learn's
  and Keras' default (about 3x smaller variance than He's on these layers);
- ``init searched`` (``search_space.init: {"choices": ["he", "glorot", "torch"]}``): He stays the default
  (the project's rule) and the search chooses the initialisation per trial;
- ``decay biases too`` (``weight_decay_on: "all"``): weight decay on biases as well, tuner's default
  before 2026-12-07 (now biases and normalisation weights are not decayed).

The target (issue 19): on each of the four data sets, the mean test score is not below scikit-learn's by
more than one standard error of the paired (per seed) difference, over at least 10 seeds, for both
``default`` and ``init searched``: each variant records ``diff_vs_sklearn_mean``/``_se`` and
``not_below_sklearn_by_1se``, and bench/report.py prints the verdicts.

Seeds 0..19 by default (``--seeds``): seeds 0-9 are the ones the first rung at epoch 6 was picked on,
10-19 check it on searches it was not picked on (both halves are reported). The scikit-learn scores are
read from bench/results/peers.json (its seeds, 0-9, same rows). ``.venv/bin/python -m bench.sklearn_gap``
(about 80 minutes on one core); ``--only "default,init searched" --seeds 10`` re-runs the named variants
on seeds 0-9 (about 15 minutes) and keeps the others' figures from the last run (on those seeds: a kept
run of more seeds is cut down to them; a variant or data set the last run lacks is left out); results in
bench/results/sklearn_gap.json. ``--quick`` (4 trials, 10 epochs, seed 0; with ``--only``, just those
variants, nothing kept) writes bench/results/sklearn_gap.quick.json instead.
"""

from __future__ import annotations

import datetime as _dt
import json
import tempfile
from pathlib import Path
from typing import Any

from bench.common import RESULTS, banner, git_commit, parser, quiet_optuna, set_threads, table, write_result

DATASETS = ("digits", "diabetes", "breast_cancer", "wine")  # part 8's four (scikit-learn scores in peers.json)
VARIANTS = ("default", "SH first rung 1", "no pruner", "PyTorch default init", "Glorot init", "init searched",
            "decay biases too")
INIT_CHOICES = ["he", "glorot", "torch"]  # the "init searched" variant's search_space.init
# seeds the default first rung was chosen on (bench/notes.md); the rest are held out
CHOSEN_ON = range(10)
# the per-variant figures that are lists over the run's seeds (sliced when --only keeps a longer run's)
_PER_SEED = ("scores", "epochs")


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
    elif variant == "init searched":  # He stays the default; here the search picks the init per trial
        d["search_space"]["init"] = {"choices": list(INIT_CHOICES)}
    elif variant == "decay biases too":  # the default before 2026-12-07: weight decay on every parameter
        d["weight_decay_on"] = "all"
    return d


def summarise(scores: list[float], epochs: list[int], seeds: list[int], sk: dict[int, float]) -> dict[str, Any]:
    """A variant's figures on ``seeds``: mean, its standard error, median, epochs, and the paired
    difference to scikit-learn (on the seeds both ran) with its standard error and whether the mean is
    not below scikit-learn's by more than one standard error (``None`` without two paired seeds)."""
    import numpy as np

    from bench.peers import mean_se

    mean, se = mean_se(scores)
    diffs = [a - sk[s] for a, s in zip(scores, seeds, strict=True) if s in sk]
    d_mean, d_se = mean_se(diffs)
    return {"scores": scores, "mean": mean, "se": se, "median": float(np.median(scores)),
            "epochs": epochs, "median_epochs": float(np.median(epochs)),
            "diff_vs_sklearn_mean": d_mean, "diff_vs_sklearn_se": d_se, "diff_vs_sklearn_seeds": len(diffs),
            # "not below by more than one standard error": a tie with the bound (one differing seed) is not below
            "not_below_sklearn_by_1se": None if d_mean is None or d_se is None else bool(d_mean >= -d_se - 1e-12)}


def _kept(last: dict[str, Any], seeds: list[int], sk_scores: dict[str, dict[int, float]],
          only: list[str]) -> dict[str, dict[str, Any]]:
    """The last run's figures of the variants not re-run, on ``seeds`` (a subset of its seeds: their
    per-seed lists are sliced and the summaries recomputed). A data set or variant the last run lacks is
    left out (said on stdout)."""
    index = {s: i for i, s in enumerate(last["seeds"])}
    kept: dict[str, dict[str, Any]] = {}
    for ds in DATASETS:
        variants = last["datasets"].get(ds, {}).get("variants", {})
        for v in VARIANTS:
            if v in only:
                continue
            if v not in variants:
                print(f"  {ds:<13} {v:<22} not in the last run: left out (add it to --only to run it)")
                continue
            old = variants[v]
            picked = {k: [old[k][index[s]] for s in seeds] for k in _PER_SEED}
            kept.setdefault(ds, {})[v] = {
                **summarise(picked["scores"], picked["epochs"], seeds, sk_scores.get(ds, {})),
                "run": old.get("run") or {"date": last["date"], "commit": last["commit"]},
            }
    return kept


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=20, help="seeds 0..N-1")
    p.add_argument("--only", default=None, help="comma-separated variants to run; the others are kept from the "
                   "last run's JSON (on these seeds, which the last run must include); with --quick, only these run")
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
    kept: dict[str, dict[str, Any]] = {}
    if args.only and not args.quick:  # a smoke run keeps nothing: it writes sklearn_gap.quick.json
        last_file = RESULTS / "sklearn_gap.json"
        if not last_file.is_file():
            p.error("--only keeps the other variants from bench/results/sklearn_gap.json, which is missing")
        last = json.loads(last_file.read_text())
        if last.get("quick") or not set(seeds) <= set(last["seeds"]):
            p.error(f"--only needs a full last run on these seeds (it ran seeds {last['seeds']}); lower --seeds "
                    "or run every variant")
        kept = _kept(last, seeds, sk_scores, only)
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
                print(f"  {ds:<13} {variant:<22} seed={seed} test={scores[-1]:.4f} epochs={r.get('epochs')}",
                      flush=True)
            per[variant] = {**summarise(scores, epochs, seeds, sk_scores.get(ds, {})),
                            "run": {"date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
                                    "commit": git_commit()}}
        base = per.get("default")
        for v in per.values():  # paired against the default, on all seeds and on the held-out ones
            if base is None:
                break
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
                  s.get("diff_vs_default_mean"), s.get("diff_vs_default_held_out_mean"), s.get("epochs_vs_default")]
                 for ds, o in out.items() for v, s in o["variants"].items()], digits=4))
    for variant in ("default", "init searched"):
        verdicts = {ds: o["variants"].get(variant, {}).get("not_below_sklearn_by_1se") for ds, o in out.items()}
        known = None if None in verdicts.values() else all(verdicts.values())
        print(f"{variant}: not below scikit-learn by more than one standard error on any data set: "
              f"{'-' if known is None else 'yes' if known else 'no'} ({verdicts})")
    write_result("sklearn_gap", {"seeds": seeds, "n_trials": n_trials, "max_epochs": max_epochs, "datasets": out},
                 quick=args.quick, no_write=args.no_write)


if __name__ == "__main__":
    main()
