"""Part 3 - service overhead: one small job through POST /jobs + a worker vs a bare in-process script.

The job: the digits MLP example (median pruner, TPE seed 0), fewer trials and epochs. The bare script calls
``optuna.create_study`` (in memory, the spec's sampler and pruner), ``tuner.Objective`` and
``tuner.finalize`` in this process; the service runs the same spec through ``POST /jobs`` and one
``tuner worker`` process on SQLite (the ``make run`` set-up), polled once a second. Both use one torch
thread. Repeats interleave bare and service runs; the API and the (idle) worker stay up between jobs.

Per trial: (a) end to end - bare: prepare data + create study + optimise + finalise; service: the job's
``finished_at - created_at`` (server clock), divided by ``n_trials``; (b) search only - first trial start to
last trial end (Optuna timestamps) / ``n_trials``. Target: service/bare <= 1.05 (end to end).
A bare run on a SQLite file (``optuna.create_study(storage="sqlite:///...")``) is shown too, to split the
overhead into "storage" and "service machinery".
"""

from __future__ import annotations

import copy
import datetime as dt
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
    set_threads,
    table,
    write_result,
)


def _ts(s: Any) -> float:
    if isinstance(s, dt.datetime):
        d = s
    else:
        d = dt.datetime.fromisoformat(str(s))
    if d.tzinfo is None:
        d = d.replace(tzinfo=dt.UTC)
    return d.timestamp()


def epochs_of(curve: Any) -> int:
    if not curve:
        return 0
    return sum(len(c) for c in curve) if isinstance(curve[0], list) else len(curve)


def bare(spec_dict: dict[str, Any], storage: str | None) -> dict[str, Any]:
    import optuna

    from tuner.runner import Objective, finalize, prepare_data
    from tuner.spec import parse_spec

    with tempfile.TemporaryDirectory(prefix="bench-bare-") as tmp:
        t0 = time.perf_counter()
        spec = parse_spec(spec_dict)
        data = prepare_data(spec)
        study = optuna.create_study(
            storage=storage if storage is None else storage.format(tmp=tmp), study_name=spec.name,
            sampler=spec.sampler.build(spec.effective_search_space()), pruner=spec.pruner.build(),
            direction=spec.direction,
        )
        objective = Objective(spec, data, artifacts_dir=Path(tmp))
        study.optimize(objective, n_trials=spec.budget.n_trials)
        finalize(study, spec, data, artifacts_dir=Path(tmp))
        total = time.perf_counter() - t0
        trials = study.get_trials(deepcopy=False)
        search = max(t.datetime_complete.timestamp() for t in trials) - min(t.datetime_start.timestamp()
                                                                            for t in trials)
        return {"end_to_end_s": total, "search_s": search, "n": len(trials),
                "epochs": sum(epochs_of(t.user_attrs.get("val_curve")) for t in trials),
                "best_value": study.best_value}


def via_service(svc: Any, spec_dict: dict[str, Any]) -> dict[str, Any]:
    job_id = svc.submit(spec_dict)
    job = svc.wait(job_id, poll_s=1.0)
    if job["status"] != "succeeded":
        raise RuntimeError(f"job {job_id} {job['status']}: {job.get('error')}")
    trials = svc.trials(job_id)
    search = max(_ts(t["datetime_complete"]) for t in trials) - min(_ts(t["datetime_start"]) for t in trials)
    return {"end_to_end_s": _ts(job["finished_at"]) - _ts(job["created_at"]), "search_s": search,
            "queue_s": _ts(job["started_at"]) - _ts(job["created_at"]), "n": len(trials),
            "epochs": sum(epochs_of(t.get("val_curve")) for t in trials),
            "best_value": (job.get("best_trial") or {}).get("value")}


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=None)
    args = p.parse_args()
    from bench import service

    if service.skipped("overhead", args):
        return
    quiet_optuna()
    set_threads(args.threads)
    repeats = args.repeats or (1 if args.quick else 3)
    n_trials, max_epochs = (5, 3) if args.quick else (20, 15)
    base = load_example("digits-mlp.json")
    base["budget"] = {"n_trials": n_trials, "max_epochs": max_epochs, "timeout_s": 3600}

    runs: dict[str, list[dict[str, Any]]] = {"bare (memory)": [], "bare (sqlite file)": [], "service": []}
    with service.Service("sqlite", torch_threads=args.threads) as svc:
        svc.start_workers(1)
        warm = copy.deepcopy(base)
        warm["name"], warm["budget"] = "warm-up", {"n_trials": 2, "max_epochs": 2, "timeout_s": 600}
        bare(warm, None)
        via_service(svc, warm)
        banner(f"digits MLP, {n_trials} trials, max {max_epochs} epochs, {repeats} interleaved repeats")
        for r in range(repeats):
            order = ["bare (memory)", "service", "bare (sqlite file)"]
            order = order[r % 3:] + order[: r % 3]
            for kind in order:
                d = copy.deepcopy(base)
                d["name"] = f"overhead-{r}-{kind.split()[0]}"
                if kind == "service":
                    res = via_service(svc, d)
                else:
                    res = bare(d, None if kind == "bare (memory)" else "sqlite:///{tmp}/bare.db")
                runs[kind].append(res)
                print(f"  repeat {r + 1} {kind:<18} end-to-end {res['end_to_end_s']:.2f}s search "
                      f"{res['search_s']:.2f}s trials {res['n']} epochs {res['epochs']}", flush=True)
        logs = svc.worker_logs()

    summary: dict[str, Any] = {}
    ref = runs["bare (memory)"]
    for kind, rs in runs.items():
        summary[kind] = {
            "end_to_end_s_per_trial": median(x["end_to_end_s"] / n_trials for x in rs),
            "search_s_per_trial": median(x["search_s"] / n_trials for x in rs),
            "ratio_end_to_end": median(ratio(x["end_to_end_s"], y["end_to_end_s"]) for x, y in zip(rs, ref, strict=True)),
            "ratio_search": median(ratio(x["search_s"], y["search_s"]) for x, y in zip(rs, ref, strict=True)),
            "median_epochs": median(x["epochs"] for x in rs),
            "median_queue_s": median(x.get("queue_s") for x in rs),
        }
    rows = [[k, s["end_to_end_s_per_trial"], s["ratio_end_to_end"], s["search_s_per_trial"], s["ratio_search"],
             s["median_epochs"]] for k, s in summary.items()]
    banner("medians over repeats (ratios: paired per repeat, vs bare in-memory)")
    print(table(["run", "s/trial end-to-end", "ratio", "s/trial search", "ratio", "epochs"], rows))
    target = summary["service"]["ratio_end_to_end"]
    print(f"\ntarget service/bare <= 1.05: {target:.3f} -> {'met' if target <= 1.05 else 'MISSED'}")
    write_result("overhead", {
        "status": "ok",
        "config": {"threads": args.threads, "repeats": repeats, "n_trials": n_trials, "max_epochs": max_epochs,
                   "backend": "sqlite", "workers": 1, "spec": "examples/digits-mlp.json (median pruner)"},
        "summary": summary,
        "runs": runs,
        "worker_warnings": [ln for ln in logs.splitlines() if " WARNING " in ln or " ERROR " in ln][:50],
        "target": {"ratio": target, "threshold": 1.05, "met": bool(target <= 1.05)},
    }, quick=args.quick, no_write=args.no_write)


if __name__ == "__main__":
    main()
