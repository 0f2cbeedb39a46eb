"""Part 5 - workers: trials per minute with 1 vs 2 ``tuner worker`` processes, Postgres and SQLite.

One job per run: the digits MLP example with every trial the same cost (batch size fixed at 32, pruning
off, early-stopping patience = max epochs so every trial trains all its epochs), TPE seed 0. Each worker
is a separate process with one torch thread; workers are started (and have logged their start) before the
job is submitted and stopped after it. Throughput = trials (and epochs) from the first trial's start to the
last trial's end, per minute; the test-set scoring after the search is outside that window. Postgres: a
throwaway database on the local server; SQLite: a file in a temporary directory (WAL). Repeats interleave
the four set-ups. Errors = failed trials + WARNING/ERROR lines in the worker logs + jobs not succeeded.
Target: 2 workers >= 1.8x the trials/min of 1 worker on Postgres.
"""

from __future__ import annotations

import copy
import datetime as dt
import os
from typing import Any

from bench.common import banner, load_example, median, parser, ratio, table, write_result

SETUPS = (("postgres", 1), ("postgres", 2), ("sqlite", 1), ("sqlite", 2))


def _ts(s: str) -> float:
    d = dt.datetime.fromisoformat(s)
    return (d if d.tzinfo else d.replace(tzinfo=dt.UTC)).timestamp()


def one_run(svc: Any, spec: dict[str, Any], n_workers: int) -> dict[str, Any]:
    svc.start_workers(n_workers)
    try:
        load0 = os.getloadavg()[0]
        job_id = svc.submit(spec)
        job = svc.wait(job_id, poll_s=1.0)
        trials = svc.trials(job_id)
    finally:
        logs = svc.worker_logs()
        svc.stop_workers()
    done = [t for t in trials if t["datetime_complete"]]
    window = max(_ts(t["datetime_complete"]) for t in done) - min(_ts(t["datetime_start"]) for t in trials)
    counted = [t for t in trials if t["state"] in ("complete", "pruned")]
    epochs = sum(len(t.get("val_curve") or []) for t in counted)
    warn = [ln for ln in logs.splitlines() if " WARNING " in ln or " ERROR " in ln or "Traceback" in ln]
    by_worker: dict[str, int] = {}
    for t in trials:
        by_worker[str(t.get("worker"))] = by_worker.get(str(t.get("worker")), 0) + 1
    return {
        "status": job["status"], "window_s": window, "trials": len(counted),
        "trials_per_min": 60.0 * len(counted) / window, "epochs_per_min": 60.0 * epochs / window,
        "failed_trials": sum(t["state"] == "fail" for t in trials), "log_warnings": len(warn),
        "warning_lines": warn[:10], "trials_by_worker": sorted(by_worker.values()), "loadavg_before": load0,
    }


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=None)
    args = p.parse_args()
    from bench import service

    reason = service.available() or service.postgres_available()
    if reason:
        print(f"skipped: {reason}")
        write_result("workers", {"status": "skipped", "reason": reason}, quick=args.quick, no_write=args.no_write)
        return
    repeats = args.repeats or (1 if args.quick else 3)
    n_trials, epochs = (6, 4) if args.quick else (24, 15)
    base = load_example("digits-mlp.json")
    base["search_space"]["batch_size"] = {"value": 32}
    base["pruner"] = {"kind": "none"}
    base["budget"] = {"n_trials": n_trials, "max_epochs": epochs, "timeout_s": 3600}
    base["early_stopping"] = {"patience": epochs}

    runs: dict[str, list[dict[str, Any]]] = {f"{b}, {n} worker{'s' if n > 1 else ''}": [] for b, n in SETUPS}
    with service.Service("postgres", torch_threads=args.threads) as pg, \
            service.Service("sqlite", torch_threads=args.threads) as lite:
        svcs = {"postgres": pg, "sqlite": lite}
        banner(f"{n_trials} trials x {epochs} epochs (batch 32), {repeats} interleaved repeats")
        for r in range(repeats):
            order = list(SETUPS[r % 4:] + SETUPS[: r % 4])
            for backend, n in order:
                key = f"{backend}, {n} worker{'s' if n > 1 else ''}"
                d = copy.deepcopy(base)
                d["name"] = f"workers-{r}-{backend}-{n}"
                res = one_run(svcs[backend], d, n)
                runs[key].append(res)
                print(f"  repeat {r + 1} {key:<20} {res['trials_per_min']:6.1f} trials/min "
                      f"({res['window_s']:.1f}s) status={res['status']} failed={res['failed_trials']} "
                      f"warnings={res['log_warnings']} split={res['trials_by_worker']}", flush=True)

    summary: dict[str, Any] = {}
    for key, rs in runs.items():
        backend = key.split(",")[0]
        ref = runs[f"{backend}, 1 worker"]
        summary[key] = {
            "trials_per_min": median(x["trials_per_min"] for x in rs),
            "epochs_per_min": median(x["epochs_per_min"] for x in rs),
            "speedup_vs_1_worker": median(ratio(x["trials_per_min"], y["trials_per_min"])
                                          for x, y in zip(rs, ref, strict=True)),
            "failed_trials": sum(x["failed_trials"] for x in rs),
            "log_warnings": sum(x["log_warnings"] for x in rs),
            "jobs_not_succeeded": sum(x["status"] != "succeeded" for x in rs),
        }
    rows = [[k, s["trials_per_min"], s["epochs_per_min"], s["speedup_vs_1_worker"], s["failed_trials"],
             s["log_warnings"], s["jobs_not_succeeded"]] for k, s in summary.items()]
    banner("medians over repeats (speed-up paired per repeat); errors summed over repeats")
    print(table(["set-up", "trials/min", "epochs/min", "x vs 1 worker", "failed trials", "log warnings",
                 "jobs not ok"], rows, digits=2))
    target = summary["postgres, 2 workers"]["speedup_vs_1_worker"]
    print(f"\ntarget Postgres 2 vs 1 worker >= 1.8x: {target:.2f} -> {'met' if target >= 1.8 else 'MISSED'}")
    write_result("workers", {
        "status": "ok",
        "config": {"threads_per_worker": args.threads, "repeats": repeats, "n_trials": n_trials,
                   "epochs_per_trial": epochs, "batch_size": 32},
        "summary": summary,
        "runs": runs,
        "target": {"speedup": target, "threshold": 1.8, "met": bool(target >= 1.8)},
    }, quick=args.quick, no_write=args.no_write)


if __name__ == "__main__":
    main()
