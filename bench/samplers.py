"""Part 2 - samplers: TPE vs random vs GP on one budget; best validation value and trials to reach random's best.

The digits MLP example with pruning off (so every trial runs to early stopping and the samplers see the
same kind of evidence), a fixed trial budget, several sampler seeds; runs interleaved (for each seed, every
sampler once, rotated order). "Trials to reach random's best": the first trial whose best-so-far value is
at least as good as the median (over seeds) of random search's final best; ">N" when a run never got there.
"""

from __future__ import annotations

import copy
import math
from typing import Any

from bench.common import (
    Timer,
    banner,
    load_example,
    median,
    parser,
    quiet_optuna,
    set_threads,
    table,
    write_result,
)

SAMPLERS = ("tpe", "random", "gp")


def run_one(spec_dict: dict[str, Any], n_trials: int) -> dict[str, Any]:
    from tuner.runner import Objective, open_study, optimize, prepare_data
    from tuner.spec import parse_spec

    spec = parse_spec(spec_dict)
    data = prepare_data(spec)
    study = open_study(spec, None)
    with Timer() as t:
        optimize(study, Objective(spec, data), n_trials=n_trials, timeout_s=None)
    values = [tr.value for tr in sorted(study.trials, key=lambda tr: tr.number)]
    sign = 1.0 if spec.direction == "minimize" else -1.0
    best_so_far: list[float] = []
    for v in values:
        if v is None:
            best_so_far.append(best_so_far[-1] if best_so_far else math.inf * sign)
        else:
            best_so_far.append(v if not best_so_far else (min if sign > 0 else max)(best_so_far[-1], v))
    return {"wall_s": round(t.s, 3), "best_value": float(study.best_value), "best_so_far": best_so_far,
            "direction": spec.direction}


def trials_to_reach(best_so_far: list[float], threshold: float, direction: str) -> int | None:
    for i, v in enumerate(best_so_far, start=1):
        if (v <= threshold) if direction == "minimize" else (v >= threshold):
            return i
    return None


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=None)
    p.add_argument("--trials", type=int, default=None)
    p.add_argument("--max-epochs", type=int, default=None)
    args = p.parse_args()
    quiet_optuna()
    set_threads(args.threads)
    seeds = list(range(args.seeds or (2 if args.quick else 5)))
    n_trials = args.trials or (10 if args.quick else 30)
    max_epochs = args.max_epochs or (5 if args.quick else 15)
    base = load_example("digits-mlp.json")
    base["pruner"] = {"kind": "none"}
    base["budget"] = {**base["budget"], "n_trials": n_trials, "max_epochs": max_epochs, "timeout_s": None}

    warm = copy.deepcopy(base)
    warm["name"], warm["budget"]["max_epochs"] = "warm-up", 2
    run_one(warm, 2)

    banner(f"digits MLP, val_loss, {n_trials} trials, max {max_epochs} epochs, pruner none, seeds {seeds}")
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in SAMPLERS}
    for i, seed in enumerate(seeds):
        order = SAMPLERS[i % 3:] + SAMPLERS[: i % 3]
        for name in order:
            d = copy.deepcopy(base)
            d["name"] = f"samplers-{name}-s{seed}"
            d["sampler"] = {"kind": name, "seed": seed}
            r = run_one(d, n_trials)
            r["seed"] = seed
            runs[name].append(r)
            print(f"  seed={seed} {name:<6} best={r['best_value']:.4f} wall={r['wall_s']:.1f}s", flush=True)

    direction = runs["random"][0]["direction"]
    threshold = median(r["best_value"] for r in runs["random"])
    assert threshold is not None
    summary: dict[str, Any] = {}
    for name, rs in runs.items():
        reach = [trials_to_reach(r["best_so_far"], threshold, direction) for r in rs]
        # Median with "never" as +inf: it is a number only when at least half of the runs got there.
        ordered = sorted(math.inf if x is None else x for x in reach)
        mid = ordered[(len(ordered) - 1) // 2] if len(ordered) % 2 else (ordered[len(ordered) // 2 - 1]
                                                                         + ordered[len(ordered) // 2]) / 2
        summary[name] = {
            "median_best_value": median(r["best_value"] for r in rs),
            "best_values": [r["best_value"] for r in rs],
            "trials_to_reach_random_best": reach,
            "median_trials_to_reach": None if math.isinf(mid) else mid,
            "runs_reaching": sum(x is not None for x in reach),
            "median_wall_s": median(r["wall_s"] for r in rs),
        }
    rows = [[n, s["median_best_value"], min(s["best_values"]), max(s["best_values"]),
             s["median_trials_to_reach"] if s["median_trials_to_reach"] is not None else f">{n_trials}",
             f"{s['runs_reaching']}/{len(seeds)}", s["median_wall_s"]] for n, s in summary.items()]
    banner(f"medians over {len(seeds)} seeds; threshold = random's median final best = {threshold:.4f}")
    print(table(["sampler", "best val_loss", "min", "max", "trials to reach", "runs reaching", "wall s"], rows,
                digits=4))
    write_result("samplers", {
        "config": {"threads": args.threads, "seeds": seeds, "n_trials": n_trials, "max_epochs": max_epochs,
                   "spec": "examples/digits-mlp.json with pruner none", "objective": base["objective"],
                   "direction": direction},
        "threshold_random_median_best": threshold,
        "summary": summary,
        "runs": runs,
    }, quick=args.quick, no_write=args.no_write)


if __name__ == "__main__":
    main()
