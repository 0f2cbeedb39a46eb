"""The ``tuner`` CLI's client commands: ``submit``, ``jobs``, ``status``, ``watch``, ``cancel``, ``result``.

A thin layer on :class:`tuner.client.Client`; the server's address comes from ``--url`` or ``TUNER_URL``,
its key from ``--api-key`` or ``TUNER_API_KEY``. ``--watch`` draws a live progress bar with rich (fed by
long-polling, so it costs the server one request per change) and ends with the best parameters and
the test metrics. Exit codes: 0 succeeded, 1 failed (or a server error), 2 refused spec, 3 cancelled,
130 interrupted while watching (the job goes on).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import datetime
from typing import Any

__all__ = ["add_client_commands"]

EXIT_FAILED, EXIT_BAD_SPEC, EXIT_CANCELLED, EXIT_INTERRUPTED = 1, 2, 3, 130


def add_client_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the client commands to the ``tuner`` parser's subcommands."""
    from tuner.client import DEFAULT_URL

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=os.environ.get("TUNER_URL", DEFAULT_URL),
                        help="the service (default: TUNER_URL or %(default)s)")
    common.add_argument("--api-key", default=os.environ.get("TUNER_API_KEY"),
                        help="sent as 'Authorization: Bearer KEY' (default: TUNER_API_KEY)")

    p = sub.add_parser("submit", parents=[common], help="submit a job spec to the service",
                       description="Submit a job spec (JSON/YAML) to a tuneserve service.")
    p.add_argument("spec", help="job spec (.json, .yaml or .yml)")
    p.add_argument("--watch", action="store_true", help="show live progress until the job is finished")
    p.set_defaults(func=_cmd_submit)

    p = sub.add_parser("jobs", parents=[common], help="list the service's jobs")
    p.add_argument("--status", default=None, help="only jobs in this status")
    p.add_argument("--limit", type=int, default=20, help="default: %(default)s")
    p.set_defaults(func=_cmd_jobs)

    for name, help_text, func in (("status", "a job's status and progress as JSON", _cmd_status),
                                  ("watch", "live progress of a job until it is finished", _cmd_watch),
                                  ("cancel", "cancel a job", _cmd_cancel)):
        p = sub.add_parser(name, parents=[common], help=help_text)
        p.add_argument("job_id", metavar="ID")
        p.set_defaults(func=func)

    p = sub.add_parser("result", parents=[common], help="a finished job's result bundle as JSON")
    p.add_argument("job_id", metavar="ID")
    p.add_argument("--model", default=None, metavar="PATH", help="also download the best model to PATH")
    p.set_defaults(func=_cmd_result)


# ------------------------------------------------------------------------------------------ commands
def _client(args: argparse.Namespace) -> Any:
    from tuner.client import Client

    return Client(args.url, api_key=args.api_key)


def _guard(fn: Any) -> Any:
    """Server errors -> their messages on stderr and an exit code; Ctrl-C while watching -> 130."""

    def run(args: argparse.Namespace) -> int:
        from tuner.client import TuneserveError

        try:
            return int(fn(args))
        except TuneserveError as exc:
            for line in exc.errors:
                print(line, file=sys.stderr)
            return EXIT_BAD_SPEC if exc.status_code == 422 else EXIT_FAILED
        except KeyboardInterrupt:
            print("stopped watching; the job goes on", file=sys.stderr)
            return EXIT_INTERRUPTED

    return run


@_guard
def _cmd_submit(args: argparse.Namespace) -> int:
    with _client(args) as c:
        try:
            job = c.submit(args.spec)
        except (OSError, ValueError) as exc:  # unreadable file, JSON/YAML syntax
            print(f"spec: {exc}", file=sys.stderr)
            return EXIT_BAD_SPEC
        print(job["id"])
        sys.stdout.flush()
        print(f"submitted job {job['id']} ({job['name']}, {job['n_trials']} trials) to {c.url}",
              file=sys.stderr)
        return _watch(c, job["id"]) if args.watch else 0


@_guard
def _cmd_jobs(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    with _client(args) as c:
        jobs = c.jobs(status=args.status, limit=args.limit)
    table = Table(box=None, pad_edge=False)
    table.add_column("id", no_wrap=True, min_width=36)
    table.add_column("name")
    for name in ("status", "trials", "created"):
        table.add_column(name, no_wrap=True)
    for j in jobs:
        table.add_row(j["id"], j["name"], j["status"], str(j["n_trials"]), _when(j["created_at"])[5:])
    Console().print(table)
    return 0


@_guard
def _cmd_status(args: argparse.Namespace) -> int:
    with _client(args) as c:
        job = c.get(args.job_id)
    _print_json({k: v for k, v in job.items() if k != "spec"})
    return 0


@_guard
def _cmd_watch(args: argparse.Namespace) -> int:
    with _client(args) as c:
        job = c.get(args.job_id)
        print(f"job {job['id']} ({job['name']}, {job['n_trials']} trials) on {c.url}", file=sys.stderr)
        return _watch(c, args.job_id)


@_guard
def _cmd_cancel(args: argparse.Namespace) -> int:
    with _client(args) as c:
        job = c.cancel(args.job_id)
    print(f"job {job['id']}: {job['status']}" + (" (stopping)" if job["status"] == "running" else ""))
    return 0


@_guard
def _cmd_result(args: argparse.Namespace) -> int:
    with _client(args) as c:
        _print_json(c.result(args.job_id))
        if args.model:
            path = c.download_model(args.job_id, args.model)
            print(f"model saved to {path}", file=sys.stderr)
    return 0


# ------------------------------------------------------------------------------------------ watching
def _watch(c: Any, job_id: str) -> int:
    """A live bar on stderr while the job runs, then the best parameters and test metrics on stdout."""
    from rich.console import Console
    from rich.markup import escape
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = [TextColumn("{task.description}"), BarColumn(bar_width=12), MofNCompleteColumn(),
               TextColumn("{task.fields[counts]}"), TimeElapsedColumn(), TextColumn("ETA"),
               TimeRemainingColumn()]
    job: dict[str, Any] = {}
    with Progress(*columns, console=Console(stderr=True)) as bar:
        task = bar.add_task("", total=None, counts="")
        for job in c.watch(job_id):
            p = job["progress"]
            best = job["best_trial"]
            counts = (f"{p.get('complete', 0)} complete, {p.get('pruned', 0)} pruned, "
                      f"{p.get('failed', 0) + p.get('config_failed', 0)} failed, best "
                      + ("-" if best is None or best.get("value") is None else f"{best['value']:.4g}"))
            if job["started_at"] and bar.tasks[task].start_time is not None:
                # elapsed since the job started, not since we began to watch
                started = datetime.fromisoformat(job["started_at"]).timestamp()
                bar.tasks[task].start_time = bar.get_time() - max(0.0, time.time() - started)
            bar.update(task, description=escape(job["status"]), total=job["n_trials"],
                       completed=p.get("counted", 0), counts=counts)
    return _summary(job)


def _summary(job: dict[str, Any]) -> int:
    from rich.console import Console
    from rich.table import Table

    out = Console()
    status = job["status"]
    if status != "succeeded":
        reason = f": {job['error']}" if job.get("error") else ""
        out.print(f"job {job['id']} {status}{reason}", markup=False)
        return EXIT_CANCELLED if status == "cancelled" else EXIT_FAILED
    best = job["best_trial"] or {}
    table = Table(title=f"best trial #{best.get('number')}", show_header=True)
    table.add_column("parameter")
    table.add_column("value", justify="right")
    for k, v in (best.get("params") or {}).items():
        table.add_row(_fmt(k), _fmt(v))
    table.add_row("[bold]validation objective[/]", _fmt(best.get("value")))
    table.add_row("[bold]best epoch[/]", _fmt(best.get("best_epoch")))
    out.print(table)
    metrics = Table(title="test metrics", show_header=True)
    metrics.add_column("metric")
    metrics.add_column("value", justify="right")
    for k, v in (job.get("test_metrics") or {}).items():
        if isinstance(v, (int, float, str)) or v is None:
            metrics.add_row(_fmt(k), _fmt(v))
    out.print(metrics)
    return 0


def _fmt(v: Any) -> str:
    from rich.markup import escape

    if isinstance(v, float):
        return f"{v:.4g}"
    return "-" if v is None else escape(str(v))


def _when(ts: str | None) -> str:
    return ts[:16].replace("T", " ") if ts else ""


def _print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, default=str) + "\n")
    sys.stdout.flush()
