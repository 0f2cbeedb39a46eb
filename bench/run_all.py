"""``make bench``: every part in its own process, one at a time, then docs/BENCHMARKS.md from the results.

``python -m bench.run_all [--quick] [--only pruning,samplers]``. A part that fails does not stop the others;
the exit status is non-zero when any failed. ``--quick`` writes ``<part>.quick.json`` and leaves the docs alone.
"""

from __future__ import annotations

import argparse
import sys
import time

from tqdm import tqdm

from bench.common import banner, run_module, table

PARTS = ("pruning", "samplers", "overhead", "trainloop", "workers", "api_load", "growth", "plots", "peers", "choices",
         "sklearn_gap")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke run of every part")
    p.add_argument("--only", default=None, help="comma-separated parts (default: all)")
    p.add_argument("--no-report", action="store_true", help="do not regenerate docs/BENCHMARKS.md")
    args = p.parse_args()
    parts = args.only.split(",") if args.only else list(PARTS)
    unknown = [x for x in parts if x not in PARTS]
    if unknown:
        p.error(f"unknown part(s): {', '.join(unknown)} (known: {', '.join(PARTS)})")
    rows = []
    failed = []
    t_all = time.perf_counter()
    progress = tqdm(parts, desc="make bench", unit="part", file=sys.stderr, position=0)
    for part in progress:
        progress.set_postfix_str(part)
        banner(f"part: {part}")
        t0 = time.perf_counter()
        rc = run_module(f"bench.{part}", ["--quick"] if args.quick else [])
        rows.append([part, "ok" if rc == 0 else f"exit {rc}", time.perf_counter() - t0])
        if rc != 0:
            failed.append(part)
    banner("summary")
    print(table(["part", "result", "seconds"], rows, digits=1))
    print(f"total {time.perf_counter() - t_all:.0f} s")
    if not args.quick and not args.no_report:
        rc = run_module("bench.report")
        if rc != 0:
            failed.append("report")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
