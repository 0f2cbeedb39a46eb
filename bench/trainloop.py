"""Part 4 - training loop: epochs/s of tuner.training.fit vs a textbook DataLoader loop vs a minimal loop.

Same data (digits holdout training part, standardised), same model (the digits MLP example's 64-128-64-10
ReLU MLP, dropout 0.1, built by ``tuner.models.build_model`` from the same seed), same optimiser (Adam,
lr 1e-3), same batch size (32), training only (no validation pass), one torch thread. Variants:

* ``ours``: ``tuner.training.fit(model, train, None, cfg)`` - the engine's loop (randperm + slicing, loss
  summed on the device, one host sync per epoch, a finiteness check).
* ``dataloader``: ``DataLoader(TensorDataset(X, y), batch_size=32, shuffle=True)`` with default settings and
  the usual ``running_loss += loss.item() * len(xb)``.
* ``minimal``: a hand-written randperm + slicing loop with nothing else (the practical limit).
* ``ours + validation``: ``fit`` as a trial runs it, with a validation pass + metrics every epoch (patience
  large enough that it never stops early); for information, not part of the target.
* ``ours`` at batch 128 / 256: the batch-size/speed point.

Repeats are interleaved (every variant once per round, rotated order); figures are medians over rounds and
the ratio is the median of per-round ratios. Target: ours >= 0.95 of minimal.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from bench.common import (
    banner,
    load_example,
    median,
    parser,
    quiet_optuna,
    ratio,
    set_threads,
    table,
    write_result,
)

PARAMS = {"lr": 1e-3, "dropout": 0.1, "weight_decay": 0.0, "optimizer": "adam"}


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=None, help="epochs per timed run")
    p.add_argument("--rounds", type=int, default=None)
    args = p.parse_args()
    quiet_optuna()
    set_threads(args.threads)

    import torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    from tuner.models import build_model
    from tuner.runner import prepare_data
    from tuner.spec import parse_spec
    from tuner.training import TrainConfig, fit

    epochs = args.epochs or (3 if args.quick else 15)
    rounds = args.rounds or (2 if args.quick else 9)
    spec = parse_spec(load_example("digits-mlp.json"))
    data = prepare_data(spec)
    fold = data.folds[0]
    X, y = fold.X_train, fold.y_train
    Xv, yv = fold.X_val, fold.y_val
    assert Xv is not None and yv is not None
    n = len(X)

    def new_model(batch: int) -> nn.Module:
        torch.manual_seed(0)
        return build_model(spec.model, {**PARAMS, "batch_size": batch}, data.n_features, data.n_outputs)

    def cfg(batch: int, patience: int = 5) -> TrainConfig:
        return TrainConfig(lr=PARAMS["lr"], batch_size=batch, weight_decay=0.0, optimizer="adam",
                           max_epochs=epochs, patience=patience, objective="val_loss", direction="minimize")

    def ours(batch: int) -> Callable[[], None]:
        def go() -> None:
            fit(new_model(batch), (X, y), None, cfg(batch), task="classification",
                generator=torch.Generator().manual_seed(0))
        return go

    def ours_val() -> None:
        r = fit(new_model(32), (X, y), (Xv, yv), cfg(32, patience=epochs + 1), task="classification",
                generator=torch.Generator().manual_seed(0))
        assert r.epochs_run == epochs

    def dataloader() -> None:
        model = new_model(32)
        opt = torch.optim.Adam(model.parameters(), lr=PARAMS["lr"])
        criterion = nn.CrossEntropyLoss()
        torch.manual_seed(0)
        loader = DataLoader(TensorDataset(X, y), batch_size=32, shuffle=True)
        for _ in range(epochs):
            model.train()
            running = 0.0
            for xb, yb in loader:
                opt.zero_grad()
                loss = criterion(model(xb), yb)
                loss.backward()
                opt.step()
                running += loss.item() * len(xb)
            _ = running / n

    def minimal() -> None:
        model = new_model(32)
        opt = torch.optim.Adam(model.parameters(), lr=PARAMS["lr"])
        g = torch.Generator().manual_seed(0)
        model.train()
        for _ in range(epochs):
            perm = torch.randperm(n, generator=g)
            for s in range(0, n, 32):
                idx = perm[s:s + 32]
                opt.zero_grad(set_to_none=True)
                loss = nn.functional.cross_entropy(model(X[idx]), y[idx])
                loss.backward()
                opt.step()

    variants: dict[str, Callable[[], None]] = {
        "minimal (b32)": minimal,
        "ours (b32)": ours(32),
        "dataloader (b32)": dataloader,
        "ours + validation (b32)": ours_val,
        "ours (b128)": ours(128),
        "ours (b256)": ours(256),
    }
    for fn in variants.values():  # warm-up, untimed
        fn()
    times: dict[str, list[float]] = {k: [] for k in variants}
    names = list(variants)
    banner(f"{epochs} epochs per run, {rounds} interleaved rounds, n_train={n}, threads={args.threads}")
    for r in range(rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            t0 = time.perf_counter()
            variants[name]()
            times[name].append(time.perf_counter() - t0)
        print(f"  round {r + 1}/{rounds}: " + ", ".join(f"{k}={epochs / times[k][-1]:.1f}" for k in names),
              flush=True)

    eps = {k: [epochs / t for t in v] for k, v in times.items()}
    ref = eps["minimal (b32)"]
    summary: dict[str, Any] = {}
    for k, v in eps.items():
        summary[k] = {
            "median_epochs_per_s": median(v),
            "ratio_to_minimal": median(ratio(a, b) for a, b in zip(v, ref, strict=True)),
            "epochs_per_s": v,
        }
    # Where the validation pass's time goes: the forward pass vs the metrics computed every epoch.
    from tuner.metrics import compute_metrics
    from tuner.training import evaluate

    model = new_model(32)
    y_val_np = yv.numpy()
    t_eval, t_metrics = [], []
    for _ in range(5 if args.quick else 50):
        t0 = time.perf_counter()
        loss, outputs = evaluate(model, Xv, yv, "classification")
        t1 = time.perf_counter()
        compute_metrics("classification", y_val_np, outputs, loss)
        t_eval.append(t1 - t0)
        t_metrics.append(time.perf_counter() - t1)
    validation = {"n_val": len(Xv), "evaluate_ms": 1000 * median(t_eval),  # type: ignore[operator]
                  "compute_metrics_ms": 1000 * median(t_metrics)}  # type: ignore[operator]
    rows = [[k, s["median_epochs_per_s"], s["ratio_to_minimal"]] for k, s in summary.items()]
    banner("medians over rounds")
    print(table(["loop", "epochs/s", "vs minimal (b32)"], rows))
    print(f"\nvalidation pass per epoch ({len(Xv)} rows): evaluate {validation['evaluate_ms']:.2f} ms, "
          f"compute_metrics {validation['compute_metrics_ms']:.2f} ms")
    target = summary["ours (b32)"]["ratio_to_minimal"]
    print(f"\ntarget ours/minimal >= 0.95: {target:.3f} -> {'met' if target >= 0.95 else 'MISSED'}")
    write_result("trainloop", {
        "config": {"threads": args.threads, "epochs_per_run": epochs, "rounds": rounds, "n_train": n,
                   "n_features": data.n_features, "model": "MLP 64-128-64-10 relu, dropout 0.1",
                   "optimizer": "adam lr 1e-3", "batch_size": 32},
        "summary": summary,
        "validation_breakdown": validation,
        "target": {"ratio_ours_to_minimal": target, "threshold": 0.95, "met": bool(target >= 0.95)},
    }, quick=args.quick, no_write=args.no_write)


if __name__ == "__main__":
    main()
