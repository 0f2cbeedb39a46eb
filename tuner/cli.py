"""``tuner run SPEC``: run one tuning job from the command line (no service needed).

Progress goes to stderr, one result JSON to stdout. ``build_parser()`` returns the parser with its
``run`` subcommand so the service's CLI can add its own subcommands to it.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tuner.client_cli import add_client_commands

__all__ = ["EXIT_BAD_SPEC", "EXIT_INTERRUPTED", "build_parser", "main"]

EXIT_BAD_SPEC = 2
EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    """The ``tuner`` parser; each subcommand sets ``func(args) -> exit code``."""
    parser = argparse.ArgumentParser(prog="tuner", description="Hyperparameter tuning for PyTorch models.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    p = sub.add_parser("run", help="run a tuning job from a JSON/YAML spec", description="Run a tuning job.")
    p.add_argument("spec", type=Path, help="job spec (.json, .yaml or .yml)")
    p.add_argument("--storage", default="sqlite:///runs.db", help="Optuna storage URL (default: %(default)s)")
    p.add_argument("--study-name", default=None, help="study name (default: the spec's name)")
    p.add_argument("--artifacts", type=Path, default=Path("artifacts"), help="model directory (default: %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"], help="default: %(default)s")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="torch CPU threads per process (default: all cores with --jobs 1, else 1)")
    p.add_argument("--jobs", type=int, default=None, metavar="N",
                   help="trials in N processes on one study (default: the number of cores); only --jobs 1 "
                        "repeats a search exactly")
    p.add_argument("--rescore-test", action="store_true",
                   help="score a resumed run's new best trial on the test set although an earlier one was scored")
    p.set_defaults(func=_cmd_run)
    add_client_commands(sub)  # submit, jobs, status, watch, cancel, result (tuner/client_cli.py)
    return parser


def _print_json(result: dict[str, Any]) -> None:
    from tuner.metrics import json_safe

    sys.stdout.write(json.dumps(json_safe(result), indent=2, default=str, allow_nan=False) + "\n")
    sys.stdout.flush()


def _cmd_run(args: argparse.Namespace) -> int:
    from tuner.spec import SpecError, load_spec

    try:
        spec = load_spec(args.spec)
    except SpecError as exc:
        print("\n".join(exc.errors), file=sys.stderr)
        return EXIT_BAD_SPEC
    except (OSError, ValueError) as exc:  # unreadable file, JSON/YAML syntax
        print(f"spec: {exc}", file=sys.stderr)
        return EXIT_BAD_SPEC
    if args.threads is not None and args.threads < 1:
        print("--threads: must be at least 1", file=sys.stderr)
        return EXIT_BAD_SPEC
    if args.jobs is not None and args.jobs < 1:
        print("--jobs: must be at least 1", file=sys.stderr)
        return EXIT_BAD_SPEC
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            built = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
            print(f"--device cuda: no CUDA device is available (torch {torch.__version__}, {built}); "
                  "use --device cpu or --device auto", file=sys.stderr)
            return EXIT_BAD_SPEC
    from tuner.forkserver import default_jobs

    jobs = args.jobs if args.jobs is not None else default_jobs()

    import optuna

    from tuner.errors import TrialConfigError
    from tuner.runner import TestAlreadyScored, run

    optuna.logging.set_verbosity(logging.WARNING if not args.quiet else logging.ERROR)
    try:
        result = run(
            spec, storage=args.storage, study_name=args.study_name, artifacts_dir=args.artifacts,
            progress=not args.quiet, device=args.device, num_threads=args.threads, rescore_test=args.rescore_test,
            jobs=jobs,
        )
    except SpecError as exc:
        print("\n".join(exc.errors), file=sys.stderr)
        return EXIT_BAD_SPEC
    except (TestAlreadyScored, TrialConfigError) as exc:  # finalisation refused or failed: trials are kept
        print(str(exc), file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # outside the search (e.g. while scoring): nothing half-stored to report
        _print_json({"status": "interrupted", "study_name": args.study_name or spec.name})
        return EXIT_INTERRUPTED
    reproduce = result.get("reproduce")
    if isinstance(reproduce, dict) and reproduce.get("argv"):  # the spec file as it was given here
        import shlex

        reproduce["argv"] = [*reproduce["argv"][:2], str(args.spec), *reproduce["argv"][3:]]
        reproduce["command"] = shlex.join(reproduce["argv"])
    _print_json(result)
    if result["status"] == "interrupted":
        return EXIT_INTERRUPTED
    return 0 if result["status"] == "completed" else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``tuner`` / ``python -m tuner``; returns the exit code."""
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
