"""Render docs/BENCHMARKS.md from bench/results/<part>.json (the figures are never typed by hand).

``python -m bench.report`` (``make bench`` runs it last). The notes under each part are the analysis
written for the latest full run (bench/notes.md sections); the tables, dates and verdicts come from JSON.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from bench.common import RESULTS, ROOT, fmt, table

DOC = ROOT / "docs" / "BENCHMARKS.md"
NOTES = Path(__file__).resolve().parent / "notes.md"
PARTS = [
    ("pruning", "1. Pruning"),
    ("samplers", "2. Samplers"),
    ("overhead", "3. Service overhead"),
    ("trainloop", "4. Training loop"),
    ("workers", "5. Workers"),
    ("api_load", "6. API under load"),
    ("growth", "7. Growth"),
    ("peers", "8. Against the script a user would write (issue 10)"),
    ("plots", "9. Plots at 5,000 trials"),
    ("choices", "10. Training choices without search noise (init, patience)"),
    ("sklearn_gap", "11. The test-score gap to scikit-learn, one change at a time"),
    ("watchers", "12. Watchers: 500 event streams and 500 long-polls (issue 20)"),
]


def load(part: str) -> dict[str, Any] | None:
    path = RESULTS / f"{part}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def notes() -> dict[str, str]:
    """``## part`` sections of bench/notes.md."""
    if not NOTES.is_file():
        return {}
    out: dict[str, str] = {}
    for block in re.split(r"^## ", NOTES.read_text(), flags=re.MULTILINE)[1:]:
        name, _, body = block.partition("\n")
        out[name.strip()] = body.strip()
    return out


def verdict(met: bool | None) -> str:
    return "-" if met is None else ("**met**" if met else "**missed**")


# ------------------------------------------------------------------------------------------ parts
def pruning(r: dict[str, Any]) -> tuple[str, list[list[str]]]:
    c = r["config"]
    lines = []
    targets = []
    for key, title in (("holdout", "Holdout: digits MLP"), ("kfold", "K-fold: breast_cancer, k=5")):
        cfg = c[key]
        res = r[key]
        obj = "val_loss (lower is better)" if res["direction"] == "minimize" else "roc_auc (higher is better)"
        lines.append(f"**{title}** ({cfg['spec']}, {cfg['n_trials']} trials, max {cfg['max_epochs']} epochs, "
                     f"seeds {c['seeds']}; objective {obj})\n")
        rows = []
        for name, s in res["summary"].items():
            rows.append([name, s["median_epochs"], s["epoch_reduction_vs_none"], s["median_wall_s"],
                         s["wall_speedup_vs_none"], s["median_best_value"], s["median_test_accuracy"],
                         s["test_acc_points_lost_vs_none"], s["median_pruned"],
                         "-" if s["meets_target"] is None else ("met" if s["meets_target"] else "missed")])
            if s["meets_target"] is not None:
                targets.append([f"1. pruning, {key}, {name}", ">= 3x fewer epochs, <= 0.5 pts lost",
                                f"{fmt(s['epoch_reduction_vs_none'], 2)}x, {fmt(s['test_acc_points_lost_vs_none'], 2)} pts",
                                verdict(s["meets_target"])])
        lines.append(table(["pruner", "epochs", "x fewer epochs", "wall s", "x faster", "best value",
                            "test accuracy", "points lost", "trials pruned", "target"], rows,
                           digits=[0, 0, 2, 1, 2, 4, 4, 2, 0, 0]))
        lines.append("")
        lines.append("Pruner settings: " + "; ".join(f"`{n}`: `{json.dumps(p)}`" for n, p in cfg["pruners"].items()))
        lines.append("")
    return "\n".join(lines), targets


def samplers(r: dict[str, Any]) -> tuple[str, list[list[str]]]:
    c = r["config"]
    n = c["n_trials"]
    rows = [[name, s["median_best_value"], min(s["best_values"]), max(s["best_values"]),
             s["median_trials_to_reach"] if s["median_trials_to_reach"] is not None else f">{n}",
             f"{s['runs_reaching']}/{len(c['seeds'])}", s["median_wall_s"]] for name, s in r["summary"].items()]
    text = (f"{c['spec']}, objective {c['objective']} ({c['direction']}), {n} trials, max {c['max_epochs']} "
            f"epochs, seeds {c['seeds']}. Threshold for \"trials to reach\": random search's median final "
            f"best = {fmt(r['threshold_random_median_best'], 4)}.\n\n")
    text += table(["sampler", "median best", "best run", "worst run", "median trials to reach",
                   "runs reaching", "median wall s"], rows, digits=[0, 4, 4, 4, 0, 0, 1])
    return text, []


def overhead(r: dict[str, Any]) -> tuple[str, list[list[str]]]:
    c = r["config"]
    rows = [[k, s["end_to_end_s_per_trial"], s["ratio_end_to_end"], s["search_s_per_trial"], s["ratio_search"],
             s["median_epochs"]] for k, s in r["summary"].items()]
    text = (f"Digits MLP example, {c['n_trials']} trials, max {c['max_epochs']} epochs, {c['repeats']} "
            f"interleaved repeats, service on {c['backend']} with {c['workers']} worker, {c['threads']} torch thread "
            "everywhere. Ratios are paired per repeat against the bare in-memory script.\n\n")
    text += table(["run", "s/trial end to end", "ratio", "s/trial search only", "ratio", "epochs trained"],
                  rows, digits=[0, 3, 3, 3, 3, 0])
    t = r["target"]
    return text, [["3. service overhead", "service/bare <= 1.05 (end to end)", f"{fmt(t['ratio'], 3)}",
                   verdict(t["met"])]]


def trainloop(r: dict[str, Any]) -> tuple[str, list[list[str]]]:
    c = r["config"]
    rows = [[k, s["median_epochs_per_s"], s["ratio_to_minimal"]] for k, s in r["summary"].items()]
    v = r.get("validation_breakdown")
    text = (f"{c['model']}, {c['optimizer']}, {c['n_train']} training rows, {c['epochs_per_run']} epochs per "
            f"timed run, {c['rounds']} interleaved rounds, {c['threads']} torch thread.\n\n")
    text += table(["loop", "epochs/s", "ratio to minimal (b32)"], rows, digits=3)
    if v:
        text += (f"\n\nValidation pass per epoch ({v['n_val']} rows): forward pass (`evaluate`) "
                 f"{fmt(v['evaluate_ms'], 2)} ms, `compute_metrics` {fmt(v['compute_metrics_ms'], 2)} ms.")
    t = r["target"]
    return text, [["4. training loop", "ours >= 0.95 of minimal", fmt(t["ratio_ours_to_minimal"], 3),
                   verdict(t["met"])]]


def workers(r: dict[str, Any]) -> tuple[str, list[list[str]]]:
    c = r["config"]
    rows = [[k, s["trials_per_min"], s["epochs_per_min"], s["speedup_vs_1_worker"], s["failed_trials"],
             s["log_warnings"], s["jobs_not_succeeded"]] for k, s in r["summary"].items()]
    text = (f"{c['n_trials']} equal-cost trials ({c['epochs_per_trial']} epochs, batch {c['batch_size']}) per job, "
            f"{c['threads_per_worker']} torch thread per worker, {c['repeats']} interleaved repeats; errors are "
            "summed over the repeats.\n\n")
    text += table(["set-up", "trials/min", "epochs/min", "x vs 1 worker", "failed trials", "worker log warnings",
                   "jobs not succeeded"], rows, digits=[0, 1, 0, 2, 0, 0, 0])
    t = r["target"]
    sq = r["summary"].get("sqlite, 2 workers", {})
    return text, [
        ["5. workers, Postgres", "2 workers >= 1.8x 1 worker", f"{fmt(t['speedup'], 2)}x", verdict(t["met"])],
        ["5. workers, SQLite", "2 workers: figure and errors",
         (f"{fmt(sq.get('speedup_vs_1_worker'), 2)}x, {sq.get('failed_trials')} failed trials, "
         f"{sq.get('log_warnings')} log warnings"), "-"],
    ]


def api_load(r: dict[str, Any]) -> tuple[str, list[list[str]]]:
    c = r["config"]
    rows = [[k, x["target_rate"] or "-", x["achieved_rps"], x["p50_ms"], x["p90_ms"], x["p99_ms"], x["max_ms"],
             x["errors"], x.get("trials_in_study_after")] for k, x in r["results"].items()]
    text = (f"Service on {c['backend']} (API + 1 worker training: {c['job']}); load: {c['client']}, "
            f"{fmt(c['rate'], 0)} req/s for {fmt(c['duration_s'], 0)} s per endpoint. Latency from each "
            "request's scheduled send time.\n\n")
    text += table(["endpoint", "target req/s", "achieved req/s", "p50 ms", "p90 ms", "p99 ms", "max ms",
                   "errors", "trials in study after"], rows, digits=[0, 0, 1, 1, 1, 1, 1, 0, 0])
    t = r["target"]
    return text, [["6. API under load", f"p99 < 50 ms at {fmt(t['rate'], 0)} req/s", f"p99 {fmt(t['p99_ms'], 1)} ms",
                   verdict(t["met"])]]


def growth(r: dict[str, Any]) -> tuple[str, list[list[str]]]:
    s = r["sampler"]
    pts = s["points"]
    rows = [[lbl, *[x["ms_per_trial"][str(p)] for p in pts], x["growth"]] for lbl, x in s["storages"].items()]
    text = (f"**Sampler** (TPE, ask + suggest + tell, synthetic objective; median of the {s['window']} trials "
            f"before each point)\n\n")
    text += table(["storage", *[f"ms/trial at {p}" for p in pts], f"x ({pts[-1]} vs {pts[0]})"], rows, digits=2)
    a = r.get("api") or {}
    text += "\n\n**API** "
    if a.get("status") != "ok":
        text += f"- no figures: {a.get('reason', 'not run')}"
    else:
        small, big = a["sizes"]
        text += (f"(SQLite, studies of {small} and {big} trials inserted through Optuna, {a['requests']} sequential "
                 f"requests per endpoint and size, alternating; insert took "
                 f"{fmt(a['jobs'][str(big)]['insert_s'], 0)} s for {big} trials)\n\n")
        rows = [[k, x[f"median_ms_{small}"], x[f"median_ms_{big}"], x[f"p90_ms_{big}"], x["growth"]]
                for k, x in a["results"].items()]
        text += table(["endpoint", f"median ms, {small} trials", f"median ms, {big} trials", f"p90 ms, {big}",
                       "x"], rows, digits=1)
    return text, []


RENDER = {"pruning": pruning, "samplers": samplers, "overhead": overhead, "trainloop": trainloop,
          "workers": workers, "api_load": api_load, "growth": growth}


def seed_range(seeds: list[int]) -> str:
    """``[0, 1, 2]`` for a few seeds, ``0-19 (20)`` for a run of consecutive ones."""
    if len(seeds) > 3 and seeds == list(range(seeds[0], seeds[0] + len(seeds))):
        return f"{seeds[0]}-{seeds[-1]} ({len(seeds)})"
    return str(seeds)


def peers(r: dict[str, Any]) -> tuple[str, list[list[str]]]:
    lines: list[str] = []
    targets: list[list[str]] = []
    jobs = r["config"]["jobs"]
    if "textbook" in r:
        t = r["textbook"]
        tseeds = t.get("seeds", r["config"]["seeds"])
        lines.append(f"**Textbook Optuna script vs `tuner.run`** (digits MLP 128-64, 40 trials, <= 30 epochs, "
                     f"median pruner, TPE seeds {seed_range(tseeds)}; `jN` = `--jobs N`, one torch thread per "
                     "process; `memory` = in-memory study (a temporary journal file with N > 1), `sqlite` = a "
                     "SQLite file)\n")
        rows = [[v, s["median_wall_s"], s["median_epochs"], s["median_test_accuracy"], s["wall_ratio_vs_textbook"],
                 s["test_points_vs_textbook"], s.get("test_points_se"), s.get("test_points_median_first3")]
                for v, s in t["summary"].items()]
        lines.append(table(["variant", "wall s", "epochs", "test accuracy", "wall / textbook",
                            "test points vs textbook (mean)", "standard error", "median, seeds 0-2"],
                           rows, digits=[0, 2, 0, 4, 2, 2, 2, 2]))
        lines.append("")
        lines.append("Medians over the seeds, except the test points: the mean of the per-seed paired difference "
                     "(the verdict), its standard error, and the median over the first three seeds.")
        lines.append("")
        if t.get("from_run"):
            lines += [f"(These rows come from the full run of {t['from_run']}.)", ""]
        for v, limit in ((f"memory-j{jobs}", 0.5), (f"sqlite-j{jobs}", 0.5), ("memory-j1", 0.8), ("sqlite-j1", 0.8)):
            s = t["summary"].get(v)
            if s is None:
                continue
            ok = s["wall_ratio_vs_textbook"] <= limit and s["test_points_vs_textbook"] >= -0.5
            targets.append([f"8. tuner run {v} / textbook", f"<= {limit}, test >= -0.5 pts",
                            f"{fmt(s['wall_ratio_vs_textbook'], 2)}, {fmt(s['test_points_vs_textbook'], 2)} pts",
                            verdict(ok)])
    if "sklearn" in r:
        lines.append(f"**scikit-learn `MLP*` + `RandomizedSearchCV` (20 candidates, 5-fold, `n_jobs=-1`) vs "
                     f"`tuner.run` (20 trials, 5-fold in lockstep, default pruner, `--jobs {jobs}`, SQLite file, at most 200 "
                     "epochs per trial - scikit-learn's `max_iter`)**\n")
        rows = []
        n_ok = 0
        for ds, s in r["sklearn"].items():
            if ds == "from_run":
                continue
            rows.append([ds, s["sklearn_median_wall_s"], s["tuner_median_wall_s"], s["wall_ratio"],
                         s["sklearn_median_test"], s["tuner_median_test"], s.get("test_diff_mean"),
                         s.get("test_diff_se"), s["tuner_median_epochs"]])
            n_ok += bool(s["test_not_worse"])
            targets.append([f"8. tuner / scikit-learn, {ds}", "<= 1.0", fmt(s["wall_ratio"], 2),
                            verdict(s["wall_ratio"] <= 1.0)])
        targets.append(["8. tuner test score >= scikit-learn's median", ">= 3 of 4 data sets", f"{n_ok} of 4",
                        verdict(n_ok >= 3)])
        sseeds = r["config"].get("sklearn_seeds", r["config"]["seeds"])
        lines.append(table(["data set", "scikit-learn s", "tuner s", "tuner / sklearn", "sklearn test",
                            "tuner test", "tuner - sklearn (mean)", "standard error", "tuner epochs"], rows,
                           digits=[0, 2, 2, 2, 4, 4, 4, 4, 0]))
        lines.append("")
        lines.append(f"Test score: accuracy (classification), R² (diabetes); medians over seeds {seed_range(sseeds)} "
                     "(the verdict compares the two medians), and the mean of the per-seed paired difference.")
        lines.append("")
        if r["sklearn"].get("from_run"):
            lines += [f"(These rows come from the full run of {r['sklearn']['from_run']}.)", ""]
    if "kfold_cost" in r:
        k = r["kfold_cost"]["summary"]
        lines.append("**K-fold trial cost** (breast_cancer example, pruner none, random sampler: the same params "
                     "for every variant)\n")
        lines.append(table(["variant", "s per trial", "x holdout", "epochs (all folds)", "epochs (longest fold)"],
                           [[v, s["median_per_trial_s"], s["ratio_vs_holdout"], s["median_epochs"],
                             s["median_lockstep_epochs"]] for v, s in k.items()], digits=[0, 3, 2, 0, 0]))
        lines.append("")
        targets.append(["8. 5-fold trial / holdout trial", "<= 1.6x", fmt(k["kfold"]["ratio_vs_holdout"], 2),
                        verdict(k["kfold"]["ratio_vs_holdout"] <= 1.6)])
    if "overhead" in r:
        o = r["overhead"]["summary"]
        lines.append("**Per-epoch engine overhead** (digits MLP, batch 32, 30 epochs, median pruner reading every "
                     "epoch, SQLite file, the trial's Optuna bookkeeping and scikit-learn metric set included; "
                     "bare+val = forward/backward/step on the same batches plus one forward of the validation "
                     "rows per epoch; bare = forward/backward/step only)\n")
        if "median_engine_memory_ms_per_epoch" in o:
            lines.append(table(["study", "engine ms/epoch", "bare+val ms/epoch", "bare ms/epoch",
                                "overhead vs bare+val"],
                               [["SQLite file", o["median_engine_ms_per_epoch"], o["median_bare_val_ms_per_epoch"],
                                 o["median_bare_ms_per_epoch"], f"{100 * o['median_overhead_fraction']:.1f} %"],
                                ["in memory", o["median_engine_memory_ms_per_epoch"],
                                 o["median_bare_val_ms_per_epoch"], o["median_bare_ms_per_epoch"],
                                 f"{100 * o['median_overhead_fraction_memory']:.1f} %"]], digits=2))
            lines.append("")
            lines.append(f"Against training alone (bare, no validation forward) the SQLite-file overhead is "
                         f"{100 * o['median_overhead_fraction_vs_training_only']:.1f} %.")
        else:
            lines.append(table(["engine ms/epoch", "bare ms/epoch", "overhead"],
                               [[o["median_engine_ms_per_epoch"], o["median_bare_ms_per_epoch"],
                                 f"{100 * o['median_overhead_fraction']:.1f} %"]], digits=2))
        lines.append("")
        targets.append(["8. per-epoch engine overhead, SQLite file", "<= 10 %",
                        f"{100 * o['median_overhead_fraction']:.1f} %", verdict(o["median_overhead_fraction"] <= 0.10)])
        if "median_overhead_fraction_memory" in o:
            m = o["median_overhead_fraction_memory"]
            targets.append(["8. per-epoch engine overhead, in-memory study", "<= 10 %", f"{100 * m:.1f} %",
                            verdict(m <= 0.10)])
    return "\n".join(lines), targets


RENDER["peers"] = peers


def plots(r: dict[str, Any]) -> tuple[str, list[list[str]]]:
    """The figures and their analysis are in bench/notes.md (``## plots``), written for the run in the JSON."""
    return "", []


RENDER["plots"] = plots


def choices(r: dict[str, Any]) -> tuple[str, list[list[str]]]:
    """Fixed configurations x seeds: mean test accuracy per initialisation and patience (no target)."""
    text = (f"Digits holdout (examples/digits-mlp.json), {len(r['configs'])} fixed configurations x "
            f"{len(r['seeds'])} seeds, tuner's training loop, best-val-loss epoch kept, test accuracy.\n\n")
    text += table(["init", "patience", "runs", "mean test accuracy", "standard error"],
                  [[x["init"], x["patience"], x["runs"], x["mean_test_accuracy"], x["standard_error"]]
                   for x in r["rows"]], digits=[0, 0, 0, 4, 4])
    return text, []


RENDER["choices"] = choices


def sklearn_gap(r: dict[str, Any]) -> tuple[str, list[list[str]]]:
    """Tuner variants on the peers part's scikit-learn spec: mean test score and the paired gaps (no target)."""
    text = (f"Part 8's scikit-learn spec ({r['n_trials']} trials, 5-fold, at most {r['max_epochs']} epochs), "
            f"`--jobs 1`, seeds {seed_range(r['seeds'])}; test score: accuracy (classification), R² (diabetes); "
            "scikit-learn's scores from part 8's run, paired on the seeds both ran. \"- default\": the variant "
            "minus the default, paired per seed, on all seeds and on the held-out ones (seeds 10 and up: the "
            "default's first rung was chosen on seeds 0-9).\n\n")
    rows = []
    for ds, o in r["datasets"].items():
        for v, s in o["variants"].items():
            rows.append([ds, v, s["mean"], s["se"], s["median"], s["diff_vs_sklearn_mean"], s["diff_vs_sklearn_se"],
                         s.get("diff_vs_default_mean"), s.get("diff_vs_default_se"),
                         s.get("diff_vs_default_held_out_mean"), s.get("diff_vs_default_held_out_se"),
                         s.get("median_epochs"), s.get("epochs_vs_default")])
        rows.append([ds, "scikit-learn (part 8)", o.get("sklearn_mean"), None, o.get("sklearn_median")]
                    + [None] * 8)
    text += table(["data set", "variant", "mean test score", "se", "median", "- scikit-learn (mean)", "se",
                   "- default (mean)", "se", "- default, held out", "se", "epochs (median)", "epochs / default"],
                  rows, digits=[0, 0, 4, 4, 4, 4, 4, 4, 4, 4, 4, 0, 2])
    first: dict[str, str] = {}  # commit -> first date a variant was measured at it
    names: dict[str, list[str]] = {}
    for o in r["datasets"].values():
        for name, v in o["variants"].items():
            if run := v.get("run"):
                first[run["commit"]] = min(first.get(run["commit"], run["date"]), run["date"])
                listed = names.setdefault(run["commit"], [])
                if name not in listed:
                    listed.append(name)
    if len(first) > 1:  # variants re-run alone (--only): say when each was measured
        text += "\nVariants measured in separate runs: " + "; ".join(
            f"{', '.join(names[c])}: from {d} at `{c}`" for c, d in sorted(first.items(), key=lambda kv: kv[1])) + ".\n"
    paired, targets = sklearn_gap_paired(r)
    return text + "\n" + paired, targets


GAP_TARGET_VARIANTS = ("default", "init searched")  # issue 19: He (the default) and init searched
GAP_TARGET_DATASETS = ("digits", "diabetes", "breast_cancer", "wine")


def _not_below(s: dict[str, Any] | None) -> bool | None:
    """A variant's mean paired difference to scikit-learn is not below 0 by more than its standard error
    (None when not measured, or without two paired seeds)."""
    if not s or s.get("diff_vs_sklearn_mean") is None or s.get("diff_vs_sklearn_se") is None:
        return None
    return bool(s["diff_vs_sklearn_mean"] >= -s["diff_vs_sklearn_se"] - 1e-12)  # a tie with the bound is not below


def sklearn_gap_paired(r: dict[str, Any]) -> tuple[str, list[list[str]]]:
    """Issue 19's target: per data set, each target variant's paired mean difference to scikit-learn ±
    its standard error, and per variant a verdict: not below scikit-learn by more than one standard error
    on any of the four data sets (over at least 10 paired seeds)."""
    rows = []
    for ds in GAP_TARGET_DATASETS:
        row: list[Any] = [ds]
        for v in GAP_TARGET_VARIANTS:
            s = r["datasets"].get(ds, {}).get("variants", {}).get(v)
            if s is None or s.get("diff_vs_sklearn_mean") is None:
                row += ["not measured", None]
                continue
            se = s.get("diff_vs_sklearn_se")
            n = s.get("diff_vs_sklearn_seeds")
            row += [f"{fmt(s['diff_vs_sklearn_mean'], 4)} ± {fmt(se, 4)}" + (f" ({n} seeds)" if n else ""),
                    _not_below(s)]
        rows.append(row)
    headers = ["data set"]
    for v in GAP_TARGET_VARIANTS:
        headers += [f"{v}: - scikit-learn (mean ± se)", "within 1 se"]
    text = ("Paired against scikit-learn (issue 19's target: on each data set the mean test score is not below "
            "scikit-learn's by more than one standard error of the per-seed difference, over >= 10 seeds):\n\n")
    text += table(headers, rows, digits=[0, 0, 0, 0, 0]) + "\n"
    targets: list[list[str]] = []
    for v in GAP_TARGET_VARIANTS:
        verdicts = [_not_below(r["datasets"].get(ds, {}).get("variants", {}).get(v)) for ds in GAP_TARGET_DATASETS]
        seeds = [r["datasets"].get(ds, {}).get("variants", {}).get(v, {}).get("diff_vs_sklearn_seeds")
                 for ds in GAP_TARGET_DATASETS]
        enough = all(n is None or n >= 10 for n in seeds)  # None: a run from before the count was recorded
        met = False if False in verdicts else None if None in verdicts else enough
        missing = [ds for ds, ok in zip(GAP_TARGET_DATASETS, verdicts, strict=True) if ok is None]
        below = [ds for ds, ok in zip(GAP_TARGET_DATASETS, verdicts, strict=True) if ok is False]
        answer = "-" if met is None else "yes" if met else "no"
        why = "; ".join([*([f"below on {', '.join(below)}"] if below else []),
                         *([f"not measured: {', '.join(missing)}"] if missing else []),
                         *([] if enough else ["fewer than 10 paired seeds"])])
        why = f" ({why})" if why else ""
        text += (f"\n`{v}`: not below scikit-learn by more than one standard error on any data set: "
                 f"**{answer}**{why}\n")
        targets.append(["11", f"`{v}`: test score not below scikit-learn's by > 1 se on any of the 4 data sets",
                        "; ".join(f"{ds} {'ok' if ok else 'below' if ok is False else '-'}"
                                  for ds, ok in zip(GAP_TARGET_DATASETS, verdicts, strict=True)), verdict(met)])
    return text, targets


RENDER["sklearn_gap"] = sklearn_gap


def watchers(r: dict[str, Any]) -> tuple[str, list[list[str]]]:
    w = r["watchers"]
    text = (f"`tuner serve` ({r['backend']}, no worker) with one job whose version changes every "
            f"{fmt(r['change_every_s'], 1)} s; {r['streams']} `GET /jobs/{{id}}/events` streams and {r['polls']} "
            "ETag long-polls (`?wait=30`) from a separate process over loopback; two probes time `GET /healthz` "
            "and `GET /jobs`, one request at a time, first without watchers, then with them. "
            f"{w['connected']} watchers connected in {fmt(w['connect_s'], 1)} s; {w['changes']} changes while "
            f"measured; events per stream median {w['stream_events_median']}, long-poll answers median "
            f"{w['poll_answers_median']} (waiters get the latest state at most once a second); errors {w['errors']}."
            "\n\n")
    rows = []
    for phase in ("baseline", "with_watchers"):
        for probe in ("/healthz", "/jobs"):
            x = r[phase][probe]
            rows.append([phase.replace("_", " "), probe, x["n"], x["p50_ms"], x["p99_ms"], x["max_ms"], x["errors"]])
    text += table(["phase", "probe", "n", "p50 ms", "p99 ms", "max ms", "errors"], rows, digits=[0, 0, 0, 1, 1, 1, 0])
    worst = max(r["with_watchers"][p]["p99_ms"] for p in ("/healthz", "/jobs"))
    return text, [["12. watchers", f"p99 < {fmt(r['target_p99_ms'], 0)} ms with 500 + 500 watchers",
                   f"worst p99 {fmt(worst, 1)} ms", verdict(r["met"])]]


RENDER["watchers"] = watchers


def main() -> None:
    docs = {p: load(p) for p, _ in PARTS}
    note = notes()
    machine = next((d["machine"] for d in docs.values() if d and "machine" in d), None)
    out = ["# Benchmarks", "",
           ("Generated by `python -m bench.report` from `bench/results/<part>.json`; `make bench` "
           "(`.venv/bin/python -m bench.run_all`) re-runs every part and regenerates this file. Every figure is "
           "a ratio or a comparison measured side by side in the same run, as medians over repeats "
           "(seeds, rounds or requests as each part says). Nothing here is part of `make test`."), ""]
    if note.get("intro"):
        out += [note["intro"], ""]
    if machine:
        out += ["## Machine", "",
                table(["nproc", "CPU", "RAM GiB", "Python", "torch", "optuna"],
                      [[machine.get("nproc"), machine.get("cpu"), machine.get("ram_gib"), machine.get("python"),
                        machine.get("torch"), machine.get("optuna")]], digits=1), ""]
        others = {json.dumps(d["machine"], sort_keys=True) for d in docs.values() if d and "machine" in d}
        if len(others) > 1:
            out += ["(Not every part ran on the same machine description; see each JSON file.)", ""]
    bodies = []
    targets: list[list[str]] = []
    for part, title in PARTS:
        d = docs[part]
        body = [f"## {title}", ""]
        if d is None:
            body += ["No results yet (`bench/results/" + part + ".json` is missing).", ""]
        elif d.get("status") == "skipped":
            body += [f"Command: `{d['command']}` - run {d['date']}", "",
                     f"**No figures:** {d['reason']}", ""]
        else:
            text, t = RENDER[part](d)
            targets += t
            body += [f"Command: `{d['command']}` - run {d['date']} at commit `{d.get('commit')}`", "", text, ""]
        if note.get(part):
            body += [note[part], ""]
        bodies += body
    if targets:
        out += ["## Targets at a glance", "", table(["part", "target", "figure", "verdict"], targets), ""]
    out += bodies
    DOC.write_text("\n".join(out).rstrip() + "\n")
    print(f"wrote {DOC.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
