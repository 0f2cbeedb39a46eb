"""Part 7 - growth: TPE time per trial at 100 vs 1,000 trials, and API latency on a 5,000-trial study.

Sampler: ``study.ask()`` + ``tuner.objective.suggest_params`` (the digits MLP example's search space, its
TPE sampler) + ``study.tell()`` with a cheap synthetic objective (no training), in memory and in SQLite.
The time per trial is the median over the window of trials just before 100 and just before 1,000.

API (needs the service, ``app/``): a job's study gets 5,000 complete trials inserted through Optuna
(``optuna.trial.create_trial`` + ``study.add_trials``); then ``GET /jobs/{id}`` and ``GET /jobs/{id}/trials``
latency (medians/p99 over repeated requests) side by side with the same calls on a 50-trial job.
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import (
    banner,
    load_example,
    median,
    parser,
    quiet_optuna,
    ratio,
    table,
    write_result,
)

WINDOW = 50


def synthetic(params: dict[str, Any]) -> float:
    """A smooth bowl over the digits search space (optimum near lr 3e-3, dropout 0.2, wd 1e-4)."""
    v = (math.log10(params["lr"]) + 2.5) ** 2 + 4 * (params["dropout"] - 0.2) ** 2
    v += 0.1 * (math.log10(params["weight_decay"]) + 4) ** 2 + 0.01 * (params["batch_size"] / 64 - 1) ** 2
    return v + (0.05 if params.get("optimizer") == "adamw" else 0.0)


def sampler_growth(storage: str | None, n_trials: int, seed: int) -> list[float]:
    """Seconds per trial (ask + suggest + tell) for trials 1..n_trials."""
    import optuna

    from tuner.objective import suggest_params
    from tuner.spec import parse_spec

    d = load_example("digits-mlp.json")
    d["sampler"] = {"kind": "tpe", "seed": seed}
    spec = parse_spec(d)
    study = optuna.create_study(storage=storage, sampler=spec.sampler.build(spec.effective_search_space()),
                                direction=spec.direction, study_name=f"growth-{seed}")
    out: list[float] = []
    for _ in range(n_trials):
        t0 = time.perf_counter()
        trial = study.ask()
        value = synthetic(suggest_params(trial, spec))
        study.tell(trial, value)
        out.append(time.perf_counter() - t0)
    return out


def run_sampler_part(quick: bool) -> dict[str, Any]:
    points = (100, 300) if quick else (100, 1000)
    res: dict[str, Any] = {"points": points, "window": WINDOW, "storages": {}}
    for label in ("memory", "sqlite"):
        with tempfile.TemporaryDirectory(prefix="bench-growth-") as tmp:
            url = None if label == "memory" else f"sqlite:///{Path(tmp) / 'growth.db'}"
            t0 = time.perf_counter()
            per = sampler_growth(url, points[-1], seed=0)
            total = time.perf_counter() - t0
        at = {str(p): median(per[p - WINDOW:p]) for p in points}
        res["storages"][label] = {
            "ms_per_trial": {k: v * 1000 for k, v in at.items()},  # type: ignore[operator]
            "growth": ratio(at[str(points[-1])], at[str(points[0])]),
            "total_s": round(total, 2),
        }
        print(f"  {label}: " + ", ".join(f"at {k}: {v * 1000:.1f} ms" for k, v in at.items()), flush=True)
    rows = [[lbl, *[s["ms_per_trial"][str(p)] for p in points], s["growth"], s["total_s"]]
            for lbl, s in res["storages"].items()]
    banner(f"TPE ask+suggest+tell, median of the {WINDOW} trials before each point")
    print(table(["storage", *[f"ms/trial at {p}" for p in points], f"x ({points[-1]} vs {points[0]})",
                 "total s"], rows, digits=2))
    return res


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--skip-api", action="store_true")
    args = p.parse_args()
    quiet_optuna()
    banner("sampler time per trial")
    sampler = run_sampler_part(args.quick)
    api: dict[str, Any]
    if args.skip_api:
        api = {"status": "skipped", "reason": "--skip-api"}
    else:
        try:
            from bench import growth_api
        except ImportError as exc:
            api = {"status": "skipped", "reason": f"service not available: {exc}"}
        else:
            banner("API latency on a 5,000-trial study")
            api = growth_api.run(args.quick)
    if api.get("status") == "skipped":
        print(f"\nAPI part skipped: {api['reason']}")
    write_result("growth", {"sampler": sampler, "api": api}, quick=args.quick, no_write=args.no_write)


if __name__ == "__main__":
    main()
