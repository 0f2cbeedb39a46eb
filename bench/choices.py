"""Training choices without search noise: initialisation and patience on fixed hyperparameters.

The peers part compares whole searches, whose test accuracy moves by a point with the trials the sampler
happens to pick. Here three fixed digits configurations are trained with tuner's own training loop (holdout
split of examples/digits-mlp.json, best-val-loss epoch kept) over 10 seeds each, and scored on the test
rows, so what the initialisation and the patience do is measured apart from the search:

- ``he_all``: He on every layer, the output layer too (tuner before this part was added);
- ``he_xavier_head``: He on hidden layers, Xavier with gain 1 on the output layer (tuner now);
- ``pytorch_default``: PyTorch's own ``nn.Linear`` init (what the textbook script uses).

``.venv/bin/python -m bench.choices`` (about 2.5 minutes on one core); results in bench/results/choices.json.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np

from bench.common import banner, load_example, parser, quiet_optuna, set_threads, table, write_result

CONFIGS = [
    {"lr": 3e-3, "dropout": 0.2, "batch_size": 64, "weight_decay": 1e-4, "optimizer": "adam"},
    {"lr": 1e-3, "dropout": 0.4, "batch_size": 32, "weight_decay": 1e-5, "optimizer": "adamw"},
    {"lr": 1e-2, "dropout": 0.1, "batch_size": 128, "weight_decay": 1e-3, "optimizer": "adam"},
]
PATIENCES = (5, 10, 31)  # 31 > max_epochs 30: no early stopping (the best epoch is still kept)


def _inits() -> dict[str, Any]:
    from torch import nn

    import tuner.models as tm

    def he_all(model: nn.Module, activation: str, init: str = "auto") -> None:
        for m in model.modules():
            if isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def pytorch_default(model: nn.Module, activation: str, init: str = "auto") -> None:
        return None  # nn.Linear's reset_parameters already ran

    return {"he_all": he_all, "he_xavier_head": tm.init_weights, "pytorch_default": pytorch_default}


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    args = p.parse_args()
    quiet_optuna()
    set_threads(1)
    import torch

    import tuner.models as tm
    from tuner.data import prepare_data
    from tuner.objective import train_on_fold
    from tuner.runner import _score
    from tuner.spec import parse_spec

    banner("training choices on fixed digits configurations: init x patience, best epoch kept")
    base = copy.deepcopy(load_example("digits-mlp.json"))
    data = prepare_data(parse_spec(base))
    test = data.take_test()
    seeds = range(2 if args.quick else 10)
    inits = _inits()
    real = tm.init_weights
    rows: list[dict[str, Any]] = []
    try:
        for name, init in inits.items():
            tm.init_weights = init
            for patience in PATIENCES:
                d = copy.deepcopy(base)
                d["early_stopping"] = {"patience": patience}
                spec = parse_spec(d)
                accs = []
                for cfg in CONFIGS:
                    for seed in seeds:
                        model, _ = train_on_fold(spec, data, data.folds[0], cfg, seed=seed, device=torch.device("cpu"))
                        m, _ = _score(model, data.folds[0].preprocessor, data.task, test.frame, np.asarray(test.y),
                                      torch.device("cpu"))
                        accs.append(float(m["accuracy"]))
                rows.append({"init": name, "patience": patience, "runs": len(accs),
                             "mean_test_accuracy": float(np.mean(accs)),
                             "standard_error": float(np.std(accs, ddof=1) / math.sqrt(len(accs)))})
                print(f"  {name:<16} patience={patience:<3} acc={rows[-1]['mean_test_accuracy']:.4f} "
                      f"se={rows[-1]['standard_error']:.4f}", flush=True)
    finally:
        tm.init_weights = real
    print(table(["init", "patience", "runs", "mean test accuracy", "standard error"],
                [[r["init"], r["patience"], r["runs"], r["mean_test_accuracy"], r["standard_error"]] for r in rows],
                digits=4))
    write_result("choices", {"configs": CONFIGS, "seeds": list(seeds), "rows": rows}, quick=args.quick,
                 no_write=args.no_write)


if __name__ == "__main__":
    main()
