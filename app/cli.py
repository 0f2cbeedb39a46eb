"""The ``tuner`` console script: the engine's ``tuner run`` plus ``serve``, ``worker`` and ``migrate``."""

from __future__ import annotations

import argparse
import gc
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from app.keys_cli import register as register_keys

__all__ = ["build_parser", "main"]

log = logging.getLogger("app")


def build_parser() -> argparse.ArgumentParser:
    from tuner.cli import build_parser as engine_parser

    parser = engine_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))

    p = sub.add_parser("serve", help="start the REST API and embedded workers", description="Start the service.")
    p.add_argument("--host", default=None, help="default: TUNER_HOST or 127.0.0.1")
    p.add_argument("--port", type=int, default=None, help="default: TUNER_PORT or 8000")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="embedded worker processes (default: TUNER_EMBEDDED_WORKERS or 1; 0 = API only)")
    p.add_argument("--no-migrate", action="store_true", help="do not upgrade the database at start")
    p.add_argument("--insecure", action="store_true",
                   help="allow a non-loopback --host while no API key exists (anyone reaching the port may act)")
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("worker", help="run a standalone worker", description="Run trials of queued jobs.")
    p.add_argument("--concurrency", type=int, default=None, metavar="N",
                   help="worker processes on this host (default: TUNER_WORKER_CONCURRENCY or 1)")
    p.add_argument("--threads", type=int, default=None, metavar="N", help="torch threads per process")
    p.add_argument("--parent-pid", type=int, default=None, help=argparse.SUPPRESS)
    p.set_defaults(func=_cmd_worker)

    p = sub.add_parser("migrate", help="upgrade the database schema to the latest revision")
    p.set_defaults(func=_cmd_migrate)
    register_keys(sub)
    return parser


def _setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s")


def _cmd_migrate(_args: argparse.Namespace) -> int:
    from app.core.config import get_settings
    from app.migrate import upgrade

    url = get_settings().database_url
    upgrade(url, quiet=False)
    print("database at head", file=sys.stderr)
    return 0


def _cmd_worker(args: argparse.Namespace) -> int:
    from app.core.config import get_settings

    _setup_logging()
    settings = get_settings()
    n = args.concurrency if args.concurrency is not None else settings.worker_concurrency
    if n < 1:
        print("--concurrency: must be at least 1", file=sys.stderr)
        return 2
    threads = args.threads or settings.threads_for(n)
    if n == 1:
        from app.worker import run_worker

        run_worker(settings, threads=threads, parent_pid=args.parent_pid)
        return 0
    cmd = [sys.executable, "-m", "app", "worker", "--concurrency", "1", "--threads", str(threads),
           "--parent-pid", str(os.getpid())]
    return _supervise([subprocess.Popen(cmd) for _ in range(n)], settings.grace_period)


def _supervise(
    children: list[subprocess.Popen[Any]], grace: float, serve: Any = None,
    restart: Callable[[], subprocess.Popen[Any]] | None = None, backoff: tuple[float, float] = (1.0, 60.0),
) -> int:
    """Wait for the children (or run ``serve()``); on SIGTERM/SIGINT stop them cleanly.

    Without ``serve`` (``tuner worker --concurrency N``): a child that exits on its own stops the others and
    the command exits 1, so a process manager sees the failure. With ``serve`` and ``restart``
    (``tuner serve``): a dead embedded worker is restarted after a delay that doubles after each quick death,
    from ``backoff[0]`` up to ``backoff[1]`` seconds.
    """
    stopping = threading.Event()
    failed: list[str] = []

    def _on_signal(_signum: int, _frame: Any) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    keeper = None
    if serve is not None and restart is not None and children:
        keeper = threading.Thread(target=_keep_alive, args=(children, restart, stopping, backoff),
                                  name="worker-keeper", daemon=True)
        keeper.start()
    try:
        if serve is not None:
            serve()  # returns on SIGTERM/SIGINT (uvicorn re-raises them to our handler above)
        else:
            while not stopping.is_set():
                dead = [c for c in children if c.poll() is not None]
                if dead:
                    if not stopping.is_set():
                        failed.extend(f"pid {c.pid} exited with {c.returncode}" for c in dead)
                    break
                time.sleep(0.2)
    finally:
        stopping.set()
        if keeper is not None:
            keeper.join(timeout=5)
        _stop_children(children, grace)
    if failed:
        log.error("worker process died (%s); the others were stopped", ", ".join(failed))
        return 1
    return 0


def _keep_alive(
    children: list[subprocess.Popen[Any]], restart: Callable[[], subprocess.Popen[Any]],
    stopping: threading.Event, backoff: tuple[float, float],
) -> None:
    """Restart dead children in place (the list is shared with ``_stop_children``) with capped back-off."""
    first, cap = backoff
    delay = [first] * len(children)
    started = [time.monotonic()] * len(children)
    due: list[float | None] = [None] * len(children)
    while not stopping.wait(0.2):
        now = time.monotonic()
        for i, c in enumerate(children):
            if c.poll() is None:
                continue
            if due[i] is None:
                if now - started[i] > cap:  # it had lived long enough: start again from the first delay
                    delay[i] = first
                due[i] = now + delay[i]
                log.error("embedded worker pid %d exited with %s; restarting in %.1fs", c.pid, c.returncode, delay[i])
            elif now >= due[i]:  # type: ignore[operator]
                if stopping.is_set():
                    return
                children[i] = restart()
                started[i], due[i] = now, None
                delay[i] = min(cap, delay[i] * 2)
                log.info("embedded worker restarted as pid %d", children[i].pid)


def _stop_children(children: list[subprocess.Popen[Any]], grace: float) -> None:
    for c in children:
        if c.poll() is None:
            c.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + max(5.0, grace)
    for c in children:
        try:
            c.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            c.kill()
            c.wait()


def _server_class() -> type:
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server that, on SIGTERM/SIGINT, first stops what would keep answers open: figures being
        drawn (their requests answer 503 at once; the plot threads are not waited for) and waits on a job
        (long-polls answer 304, event streams end). Any other answer still open after the grace period is
        cancelled (``timeout_graceful_shutdown``)."""

        def __init__(self, config: uvicorn.Config, app: Any) -> None:
            super().__init__(config)
            self.app_state = getattr(app, "state", None)

        async def shutdown(self, sockets: Any = None) -> None:
            pool = getattr(self.app_state, "plot_pool", None)
            if pool is not None:
                pool.shutdown()
            watcher = getattr(self.app_state, "job_watcher", None)
            if watcher is not None:
                watcher.stop()
            await super().shutdown(sockets=sockets)

    return Server


def _cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from app.core.config import get_settings
    from app.main import create_app
    from app.migrate import upgrade

    _setup_logging()
    settings = get_settings()
    host = args.host or settings.host
    if args.insecure:
        log.warning("INSECURE: --insecure given; without API keys anyone who can reach %s may use the service", host)
    if not args.no_migrate:
        upgrade(settings.database_url)
    from app.api.security import serve_settings

    settings, refusal = serve_settings(settings, host, insecure=args.insecure)
    if refusal:
        print(refusal, file=sys.stderr)
        return 2
    n = args.workers if args.workers is not None else settings.embedded_workers
    if n < 0:
        print("--workers: must be at least 0", file=sys.stderr)
        return 2
    threads = settings.threads_for(max(1, n))
    cmd = [sys.executable, "-m", "app", "worker", "--concurrency", "1", "--threads", str(threads),
           "--parent-pid", str(os.getpid())]
    children = [subprocess.Popen(cmd) for _ in range(n)]
    backoff = (settings.worker_restart_backoff_s, settings.worker_restart_backoff_max_s)
    host = args.host or settings.host
    port = args.port if args.port is not None else settings.port
    app = create_app(settings)
    config = uvicorn.Config(app, host=host, port=port, log_level="info",
                            timeout_graceful_shutdown=settings.grace_period)
    server = _server_class()(config, app)
    log.info("tuneserve on http://%s:%d with %d embedded worker(s); OpenAPI at /docs", host, port, n)

    def serve() -> None:
        # Everything loaded so far lives as long as the process: out of the collector's sight it costs no time
        # in full collections, nor at exit (a stop on SIGTERM spent ~7 s collecting on a 2-core machine; ~2 s).
        gc.freeze()
        # Long-polls and event streams keep many objects alive for about a second: with the default thresholds
        # they reach the oldest generation and a full collection (a 200-300 ms pause with 1,000 watchers) ran
        # every ~2.5 s, the only answers of /healthz over 100 ms (bench/watchers.py); now about one a minute.
        gc.set_threshold(50_000, 50, 100)
        server.run()

    return _supervise(children, settings.grace_period, serve=serve, restart=lambda: subprocess.Popen(cmd),
                      backoff=backoff)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tuner`` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
