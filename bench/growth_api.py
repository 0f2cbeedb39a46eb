"""Part 7 (service half): GET /jobs/{id} and /jobs/{id}/trials latency on a 5,000-trial study vs a 100-trial one.

Two jobs are submitted to an API with no worker (SQLite, the ``make run`` set-up); their studies are
created with ``tuner.runner.open_study`` (as a worker does) and filled through Optuna: trials built in an
in-memory study (random sampler, the digits search space, per-epoch ``report`` and the user attributes a
real trial carries: curves, best epoch, metrics, duration, worker; 30 % pruned) and copied with
``study.add_trials``. Then sequential requests, alternating between the two jobs, timed on the client.
"""

from __future__ import annotations

import random
import time
from typing import Any

from bench.common import load_example, median, percentile, ratio, table

SIZES = (100, 5000)


def build_trials(spec: Any, n: int, seed: int = 0) -> list[Any]:
    import optuna

    from tuner.objective import suggest_params

    rng = random.Random(seed)
    mem = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed), direction=spec.direction)
    for i in range(n):
        t = mem.ask()
        suggest_params(t, spec)
        pruned = rng.random() < 0.3
        epochs = rng.randint(3, 8) if pruned else rng.randint(8, 30)
        start = rng.uniform(0.3, 1.0)
        val = [start * (0.9 ** e) + 0.05 for e in range(epochs)]
        for e, v in enumerate(val, start=1):
            t.report(v, e)
        t.set_user_attr("val_curve", val)
        t.set_user_attr("duration_s", round(0.04 * epochs, 4))
        t.set_user_attr("worker", "bench:0")
        if pruned:
            mem.tell(t, state=optuna.trial.TrialState.PRUNED)
            continue
        t.set_user_attr("train_curve", [v * 0.8 for v in val])
        best = min(range(epochs), key=lambda k: val[k])
        t.set_user_attr("best_epoch", best + 1)
        t.set_user_attr("val_metrics", {"loss": val[best], "accuracy": 0.9 + 0.0001 * (i % 100),
                                         "precision": 0.9, "recall": 0.9, "f1_macro": 0.9, "roc_auc": 0.99})
        mem.tell(t, val[best])
    return mem.get_trials(deepcopy=False)


def run(quick: bool) -> dict[str, Any]:
    from bench import service

    reason = service.available()
    if reason:
        return {"status": "skipped", "reason": reason}
    from app.db import make_storage
    from tuner.runner import open_study
    from tuner.spec import parse_spec

    sizes = (100, 500) if quick else SIZES
    requests = 3 if quick else 7
    out: dict[str, Any] = {"status": "ok", "backend": "sqlite", "sizes": list(sizes), "requests": requests,
                           "jobs": {}}
    with service.Service("sqlite") as svc:
        storage = make_storage(svc.db_url)
        jobs: dict[int, str] = {}
        for n in sizes:
            d = load_example("digits-mlp.json")
            d["name"] = f"growth-{n}"
            d["budget"] = {**d["budget"], "n_trials": n}  # never run: no worker
            job_id = svc.submit(d)
            job = svc.job(job_id)
            spec = parse_spec(job["spec"])
            study = open_study(spec, storage, job["study_name"])
            trials = build_trials(spec, n)
            t0 = time.perf_counter()
            study.add_trials(trials)
            insert_s = time.perf_counter() - t0
            jobs[n] = job_id
            out["jobs"][str(n)] = {"insert_s": round(insert_s, 2)}
            print(f"  inserted {n} trials in {insert_s:.1f}s", flush=True)
        endpoints = {
            "GET /jobs/{id}": lambda j, n: f"/jobs/{j}",
            "GET /jobs/{id}/trials (last page of 100)": lambda j, n: f"/jobs/{j}/trials?limit=100&offset={n - 100}",
        }
        lat: dict[str, dict[int, list[float]]] = {e: {n: [] for n in sizes} for e in endpoints}
        for name, path in endpoints.items():  # warm each, untimed
            for n in sizes:
                svc.client.get(path(jobs[n], n)).raise_for_status()
        for _ in range(requests):
            for name, path in endpoints.items():
                for n in sizes:
                    t0 = time.perf_counter()
                    r = svc.client.get(path(jobs[n], n))
                    lat[name][n].append(time.perf_counter() - t0)
                    r.raise_for_status()
                    if name == "GET /jobs/{id}":
                        assert r.json()["progress"]["counted"] == n, r.json()["progress"]
    small, big = sizes
    results: dict[str, Any] = {}
    rows = []
    for name in endpoints:
        a = [1000 * x for x in lat[name][small]]
        b = [1000 * x for x in lat[name][big]]
        results[name] = {
            f"median_ms_{small}": median(a), f"p90_ms_{small}": percentile(a, 90),
            f"median_ms_{big}": median(b), f"p90_ms_{big}": percentile(b, 90),
            "growth": ratio(median(b), median(a)),
        }
        rows.append([name, median(a), median(b), percentile(b, 90), ratio(median(b), median(a))])
    print(table(["endpoint", f"median ms ({small} trials)", f"median ms ({big} trials)", f"p90 ms ({big})",
                 "x"], rows, digits=1))
    out["results"] = results
    return out
