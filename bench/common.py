"""Shared helpers: machine description, argument parsing, tables, JSON results, timing."""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Self

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
EXAMPLES = ROOT / "examples"


def machine() -> dict[str, Any]:
    """nproc, CPU model, RAM, Python/torch/optuna versions."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram_gib = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    info: dict[str, Any] = {
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu": cpu,
        "ram_gib": ram_gib,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    try:
        import optuna
        import torch

        info["torch"] = torch.__version__
        info["optuna"] = optuna.__version__
    except ImportError:  # pragma: no cover
        pass
    return info


def git_commit() -> str | None:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="smoke run: fewer repeats/trials (figures not for the docs)")
    p.add_argument("--no-write", action="store_true", help="print only, do not write bench/results/<part>.json")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads in this process (default: %(default)s)")
    return p


def set_threads(n: int) -> None:
    import torch

    torch.set_num_threads(max(1, n))


def command_line(module: str, quick: bool) -> str:
    """The command that produced a result, with every flag it was given (run as ``python -m module``)."""
    given = sys.argv[1:] if sys.argv and sys.argv[0].endswith(module.replace(".", "/") + ".py") else []
    if quick and "--quick" not in given:
        given = [*given, "--quick"]
    return " ".join([".venv/bin/python -m", module, *(shlex.quote(a) for a in given)])


def median(values: Iterable[float | None]) -> float | None:
    vals = [float(v) for v in values if v is not None]
    return statistics.median(vals) if vals else None


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank-with-interpolation percentile (q in 0..100)."""
    if not values:
        return None
    s = sorted(values)
    if len(s) == 1:
        return s[0]
    pos = (len(s) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if digits == 0:
            return f"{v:.0f}" if v == int(v) else f"{v:.1f}"
        if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
            return f"{v:.{digits}g}"
        return f"{v:.{digits}f}" if abs(v) < 100 else f"{v:.1f}"
    return str(v)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], digits: int | Sequence[int] = 3) -> str:
    """A Markdown table (also readable on a terminal); ``digits`` may be given per column."""
    per = [digits] * len(headers) if isinstance(digits, int) else list(digits)
    cells = [[fmt(c, per[i]) for i, c in enumerate(r)] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |"
    out = [line(list(headers)), "| " + " | ".join("-" * w for w in widths) + " |"]
    out += [line(r) for r in cells]
    return "\n".join(out)


def write_result(part: str, payload: dict[str, Any], *, quick: bool, no_write: bool = False) -> Path | None:
    """Write bench/results/<part>.json (``<part>.quick.json`` for smoke runs) with machine and date."""
    doc = {
        "part": part,
        "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": git_commit(),
        "command": command_line(f"bench.{part}", quick),
        "quick": quick,
        "machine": machine(),
        **payload,
    }
    if no_write:
        return None
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / (f"{part}.quick.json" if quick else f"{part}.json")
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2, default=_json_default) + "\n")
    tmp.replace(path)
    print(f"\nwrote {path.relative_to(ROOT)}")
    return path


def _json_default(o: Any) -> Any:
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
    except ImportError:  # pragma: no cover
        pass
    return str(o)


def quiet_optuna() -> None:
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def load_example(name: str) -> dict[str, Any]:
    """An example spec as a dict (JSON or YAML)."""
    path = EXAMPLES / name
    if path.suffix in (".yaml", ".yml"):
        import yaml

        return yaml.safe_load(path.read_text())
    return json.loads(path.read_text())


class Timer:
    def __enter__(self) -> Self:
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.s = time.perf_counter() - self.t0


def banner(text: str) -> None:
    print(f"\n== {text} ==", flush=True)


def run_module(module: str, args: Sequence[str] = ()) -> int:
    """Run ``python -m module args`` in a child process (fresh interpreter, own thread settings)."""
    cmd = [sys.executable, "-m", module, *args]
    print(f"$ {' '.join(shlex.quote(c) for c in cmd)}", flush=True)
    return subprocess.call(cmd, cwd=ROOT)


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


Callback = Callable[..., Any]
