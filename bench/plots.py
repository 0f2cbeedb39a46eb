"""Plots at scale: GET /jobs/{id}/plots/history and /intermediate (and /importance) at 100 and 5,000 trials.

Same set-up as the growth part's API half (``bench.growth_api``): an API with no worker on SQLite, two
jobs whose studies are filled with synthetic trials through Optuna (curves, 30 % pruned). Each figure is
built from a bounded sample (the best 200 + the 300 most recent trials; learning curves: 100 trials of
at most 60 points), so its cost should not grow with the study. For reference, the same Optuna plot
functions on the whole study loaded with ``optuna.load_study`` are timed once per size, in-process.
"""

from __future__ import annotations

import time
from typing import Any

from tqdm import tqdm

from bench.common import (
    banner,
    load_example,
    median,
    parser,
    percentile,
    quiet_optuna,
    ratio,
    table,
    write_result,
)

SIZES = (100, 5000)
KINDS = ("history", "intermediate", "importance")


def run(quick: bool) -> dict[str, Any]:
    from bench import service
    from bench.growth_api import build_trials

    reason = service.available()
    if reason:
        return {"status": "skipped", "reason": reason}
    import optuna

    from app.db import make_storage
    from tuner.runner import open_study
    from tuner.spec import parse_spec

    sizes = (100, 500) if quick else SIZES
    requests = 3 if quick else 7
    out: dict[str, Any] = {"status": "ok", "backend": "sqlite", "sizes": list(sizes), "requests": requests,
                           "jobs": {}, "results": {}, "full_study": {}}
    with service.Service("sqlite") as svc:
        storage = make_storage(svc.db_url)
        jobs: dict[int, str] = {}
        studies: dict[int, str] = {}
        for n in sizes:
            d = load_example("digits-mlp.json")
            d["name"] = f"plots-{n}"
            d["budget"] = {**d["budget"], "n_trials": n}  # never run: no worker
            job_id = svc.submit(d)
            job = svc.job(job_id)
            spec = parse_spec(job["spec"])
            study = open_study(spec, storage, job["study_name"])
            trials = build_trials(spec, n)
            t0 = time.perf_counter()
            for i in tqdm(range(0, n, 100), desc=f"insert {n} trials", unit="x100", leave=False):
                study.add_trials(trials[i : i + 100])
            out["jobs"][str(n)] = {"insert_s": round(time.perf_counter() - t0, 2)}
            jobs[n], studies[n] = job_id, job["study_name"]
        lat: dict[str, dict[int, list[float]]] = {k: {n: [] for n in sizes} for k in KINDS}
        sizes_b: dict[str, dict[int, int]] = {k: {} for k in KINDS}
        first_importance: dict[int, float] = {}
        for n in sizes:  # warm each (the first importance request computes fANOVA; later ones hit the cache)
            for kind in KINDS:
                t0 = time.perf_counter()
                r = svc.client.get(f"/jobs/{jobs[n]}/plots/{kind}")
                if r.status_code >= 500:
                    print((svc.dir / "api.log").read_text()[-4000:])
                r.raise_for_status()
                if kind == "importance":
                    first_importance[n] = time.perf_counter() - t0
                sizes_b[kind][n] = len(r.content)
        for _ in tqdm(range(requests), desc="timed rounds"):
            for kind in KINDS:
                for n in sizes:
                    t0 = time.perf_counter()
                    svc.client.get(f"/jobs/{jobs[n]}/plots/{kind}").raise_for_status()
                    lat[kind][n].append(time.perf_counter() - t0)
        vis = {"history": optuna.visualization.plot_optimization_history,
               "intermediate": optuna.visualization.plot_intermediate_values}
        for n in sizes:
            t0 = time.perf_counter()
            full = optuna.load_study(study_name=studies[n], storage=storage)
            full.get_trials(deepcopy=False)
            load_s = time.perf_counter() - t0
            out["full_study"][str(n)] = {"load_ms": round(1000 * load_s, 1)}
            for kind, fn in vis.items():
                t0 = time.perf_counter()
                fig = fn(full)
                body = fig.to_json()
                out["full_study"][str(n)][f"{kind}_ms"] = round(1000 * (time.perf_counter() - t0 + load_s), 1)
                out["full_study"][str(n)][f"{kind}_bytes"] = len(body)
    small, big = sizes
    rows = []
    for kind in KINDS:
        a = [1000 * x for x in lat[kind][small]]
        b = [1000 * x for x in lat[kind][big]]
        out["results"][kind] = {
            f"median_ms_{small}": median(a), f"median_ms_{big}": median(b), f"p90_ms_{big}": percentile(b, 90),
            "growth": ratio(median(b), median(a)), f"bytes_{big}": sizes_b[kind][big],
        }
        rows.append([f"GET /jobs/{{id}}/plots/{kind}", median(a), median(b), percentile(b, 90),
                     ratio(median(b), median(a)), sizes_b[kind][big] / 1000])
    out["importance_first_ms"] = {str(n): round(1000 * s, 1) for n, s in first_importance.items()}
    print(table(["endpoint", f"median ms ({small})", f"median ms ({big})", f"p90 ms ({big})", "x",
                 f"kB ({big})"], rows, digits=1))
    print("whole study through optuna.visualization (load + plot + JSON):", out["full_study"])
    print("first (uncached) importance request, ms:", out["importance_first_ms"])
    return out


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    quiet_optuna()
    banner("plots on a 5,000-trial study")
    write_result("plots", run(args.quick), quick=args.quick, no_write=args.no_write)


if __name__ == "__main__":
    main()
