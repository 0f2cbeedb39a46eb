"""Part 6 - API under load: GET /jobs/{id} latency and throughput at a fixed request rate while a job trains.

The service on SQLite (the ``make run`` set-up: API + one worker process with one torch thread) trains a
long digits MLP job; once it has some finished trials, an open-loop load generator in this process
(plain asyncio streams over loopback, 64 keep-alive connections, requests due on a fixed schedule
whether or not earlier ones have answered) sends ``GET /jobs/{id}`` at the target rate for a bounded time; then the same for ``GET /healthz``
(no database: the framework's floor), and ``GET /jobs/{id}`` with ``If-None-Match`` (a poller whose copy is
current: ``304``), side by side in the same run. Latency is measured from each request's scheduled send time
(so a stalled server cannot hide queueing). Target: p99 < 50 ms at 200 req/s, and a 304 cheaper than a 200
(sequential requests, 200 and 304 alternating).
"""

from __future__ import annotations

import asyncio
import copy
import os
import time
from typing import Any

from bench.common import banner, load_example, parser, percentile, table, write_result


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = next((int(ln.split(":", 1)[1]) for ln in lines if ln.lower().startswith("content-length:")), None)
    if status in (204, 304):
        return status  # no body
    if length is None:
        raise ValueError("response without content-length")
    await reader.readexactly(length)
    return status


async def _load(port: int, path: str, rate: float, duration: float, *, connections: int = 64,
                timeout: float = 10.0, headers: str = "", ok: tuple[int, ...] = (200,)) -> dict[str, Any]:
    """Open loop: request i is due at t0 + i/rate; each of ``connections`` keep-alive connections takes the
    next due request when free (so a slow server makes requests wait, and that wait is counted). A request
    that could not even be sent within ``timeout`` of its due time is dropped and counted as an error, which
    keeps the run bounded."""
    n = int(rate * duration)
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: keep-alive\r\n{headers}\r\n".encode()
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)
    lat_sched: list[float] = []
    lat_send: list[float] = []
    errors: list[str] = []
    t0 = time.perf_counter() + 0.2
    last_done = t0

    async def connection() -> None:
        nonlocal last_done
        reader: asyncio.StreamReader | None = None
        writer: asyncio.StreamWriter | None = None
        while True:
            try:
                i = queue.get_nowait()
            except asyncio.QueueEmpty:
                break
            due = t0 + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if time.perf_counter() - due > timeout:
                errors.append("not sent within timeout")
                continue
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                assert reader is not None
                sent = time.perf_counter()
                writer.write(request)
                status = await asyncio.wait_for(_read_response(reader), timeout)
                done = time.perf_counter()
            except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError) as exc:
                errors.append(type(exc).__name__)
                if writer is not None:
                    writer.close()
                reader = writer = None
                continue
            if status not in ok:
                errors.append(f"HTTP {status}")
                continue
            lat_sched.append(done - due)
            lat_send.append(done - sent)
            last_done = max(last_done, done)
        if writer is not None:
            writer.close()

    await asyncio.gather(*(connection() for _ in range(connections)))
    elapsed = last_done - t0
    ms = lambda xs, q: None if not xs else 1000 * percentile(xs, q)  # type: ignore[operator]
    return {
        "target_rate": rate, "duration_s": duration, "connections": connections, "sent": n,
        "ok": len(lat_sched), "errors": len(errors), "error_kinds": sorted(set(errors)),
        "achieved_rps": len(lat_sched) / elapsed if elapsed > 0 else None,
        "p50_ms": ms(lat_sched, 50), "p90_ms": ms(lat_sched, 90), "p99_ms": ms(lat_sched, 99),
        "max_ms": ms(lat_sched, 100),
        "p50_ms_from_send": ms(lat_send, 50), "p99_ms_from_send": ms(lat_send, 99),
    }


def _drain(svc: Any, limit_s: float = 60.0) -> None:
    """Wait until the API answers /healthz quickly again (a previous overload's backlog is served)."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        t0 = time.perf_counter()
        svc.client.get("/healthz")
        if time.perf_counter() - t0 < 0.02:
            return
        time.sleep(0.5)


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--rate", type=float, default=200.0)
    p.add_argument("--duration", type=float, default=None)
    p.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    args = p.parse_args()
    from bench import service

    reason = service.available() or (service.postgres_available() if args.backend == "postgres" else None)
    if reason:
        print(f"skipped: {reason}")
        write_result("api_load", {"status": "skipped", "reason": reason}, quick=args.quick, no_write=args.no_write)
        return
    duration = args.duration or (3.0 if args.quick else 20.0)
    rate = 50.0 if args.quick and args.rate == 200.0 else args.rate
    spec = copy.deepcopy(load_example("digits-mlp.json"))
    spec["name"] = "api-load"
    spec["budget"] = {"n_trials": 1000, "max_epochs": 30, "timeout_s": 3600}
    results: dict[str, Any] = {}
    with service.Service(args.backend, torch_threads=args.threads) as svc:
        svc.start_workers(1)
        job_id = svc.submit(spec)
        deadline = time.monotonic() + 120
        while True:  # let it run for a while first, so the study has trials to read
            j = svc.job(job_id)
            done = (j["progress"].get("complete") or 0) + (j["progress"].get("pruned") or 0)
            if j["status"] == "running" and done >= 10 or time.monotonic() > deadline:
                break
            time.sleep(1.0)
        banner(f"{args.backend}: {rate:g} req/s for {duration:g} s per endpoint while job trains "
               f"(trials done at start: {done})")
        # Capacity first: one client, one request at a time, for a few seconds.
        lat: list[float] = []
        t_end = time.perf_counter() + (2.0 if args.quick else 5.0)
        while time.perf_counter() < t_end:
            t0 = time.perf_counter()
            svc.client.get(f"/jobs/{job_id}").raise_for_status()
            lat.append(time.perf_counter() - t0)
        results["GET /jobs/{id}, sequential (1 client)"] = {
            "target_rate": None, "achieved_rps": len(lat) / sum(lat), "ok": len(lat), "errors": 0,
            "p50_ms": 1000 * percentile(lat, 50), "p90_ms": 1000 * percentile(lat, 90),  # type: ignore[operator]
            "p99_ms": 1000 * percentile(lat, 99), "max_ms": 1000 * max(lat),  # type: ignore[operator]
            "trials_in_study_after": svc.job(job_id)["progress"].get("counted"),
        }
        print(f"  sequential GET /jobs/{{id}}: p50 {results['GET /jobs/{id}, sequential (1 client)']['p50_ms']:.1f} ms",
              flush=True)
        # 200 versus 304: sequential, alternating, so both see the same server and machine state.
        lat200: list[float] = []
        lat304: list[float] = []
        t_end = time.perf_counter() + (2.0 if args.quick else 5.0)
        while time.perf_counter() < t_end:
            t0 = time.perf_counter()
            r = svc.client.get(f"/jobs/{job_id}")
            lat200.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            r304 = svc.client.get(f"/jobs/{job_id}", headers={"If-None-Match": r.headers["etag"]})
            if r304.status_code == 304:
                lat304.append(time.perf_counter() - t0)
        for label, lat_ in (("GET /jobs/{id} 200, alternating with 304", lat200),
                            ("GET /jobs/{id} 304 (If-None-Match), alternating", lat304)):
            results[label] = {
                "target_rate": None, "achieved_rps": len(lat_) / sum(lat_), "ok": len(lat_), "errors": 0,
                "p50_ms": 1000 * percentile(lat_, 50), "p90_ms": 1000 * percentile(lat_, 90),  # type: ignore[operator]
                "p99_ms": 1000 * percentile(lat_, 99), "max_ms": 1000 * max(lat_),  # type: ignore[operator]
                "trials_in_study_after": svc.job(job_id)["progress"].get("counted"),
            }
        etag = svc.client.get(f"/jobs/{job_id}").headers["etag"]
        for label, path, hdr, ok in (
            ("GET /jobs/{id}", f"/jobs/{job_id}", "", (200,)),
            ("GET /jobs/{id}, If-None-Match (304 until a trial ends)", f"/jobs/{job_id}",
             f"If-None-Match: {etag}\r\n", (200, 304)),
            ("GET /healthz", "/healthz", "", (200,)),
        ):
            _drain(svc)
            load0 = os.getloadavg()[0]
            res = asyncio.run(_load(svc.port, path, rate, duration, headers=hdr, ok=ok))
            res["loadavg_1m_before"] = load0
            j = svc.job(job_id)
            res["job_status_after"] = j["status"]
            res["trials_in_study_after"] = j["progress"].get("counted")
            results[label] = res
            print(f"  {label}: p50 {res['p50_ms']:.1f} ms, p99 {res['p99_ms']:.1f} ms, "
                  f"{res['achieved_rps']:.0f} req/s, errors {res['errors']}", flush=True)
        svc.client.post(f"/jobs/{job_id}/cancel")
        trained = j["status"] == "running"
        # Wait (bounded) for the worker to stop at the next epoch boundary before tearing down.
        try:
            svc.wait(job_id, timeout_s=30, poll_s=0.5)
        except TimeoutError:
            pass
    rows = [[k, r["target_rate"], r["achieved_rps"], r["p50_ms"], r["p90_ms"], r["p99_ms"], r["max_ms"],
             r["errors"]] for k, r in results.items()]
    banner("latency from scheduled send time")
    print(table(["endpoint", "target req/s", "achieved req/s", "p50 ms", "p90 ms", "p99 ms", "max ms", "errors"],
                rows, digits=1))
    job = results["GET /jobs/{id}"]
    met = bool(job["p99_ms"] is not None and job["p99_ms"] < 50 and job["errors"] == 0
               and job["achieved_rps"] is not None and job["achieved_rps"] >= 0.95 * rate)
    print(f"\ntarget p99 < 50 ms at {rate:g} req/s: p99 {job['p99_ms']:.1f} ms -> {'met' if met else 'MISSED'}")
    p200 = results["GET /jobs/{id} 200, alternating with 304"]["p50_ms"]
    p304 = results["GET /jobs/{id} 304 (If-None-Match), alternating"]["p50_ms"]
    print(f"304 vs 200 (sequential p50): {p304:.2f} ms vs {p200:.2f} ms -> {'cheaper' if p304 < p200 else 'NOT cheaper'}")
    write_result("api_load", {
        "status": "ok",
        "config": {"backend": args.backend, "rate": rate, "duration_s": duration, "worker_threads": args.threads,
                   "job": "digits MLP example, 1000 trials, 30 epochs (cancelled afterwards)",
                   "job_was_training_throughout": trained, "client": "asyncio streams, open loop, 64 keep-alive connections, loopback"},
        "results": results,
        "target": {"p99_ms": job["p99_ms"], "threshold_ms": 50, "rate": rate, "met": met,
                   "p50_ms_200": p200, "p50_ms_304": p304, "304_cheaper": p304 < p200},
    }, quick=args.quick, no_write=args.no_write)


if __name__ == "__main__":
    main()
