"""Checking rows before a saved model predicts on them: the raw features of the training data, by name.

Rows come as lists (the raw feature order of the training data, before one-hot encoding), as mappings
keyed by column name, or as a DataFrame (a CSV/Parquet file). Every problem names its row (0-based) and
column, so a caller can say exactly what to fix: wrong width, unknown or missing columns, a non-number in a
numeric column, or a missing value when the model was trained without imputation. Categories never seen
in training are allowed: they are one-hot encoded as all zeros, as in training.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["MAX_PROBLEMS", "InputError", "Problem", "check_frame", "not_finite_rows", "rows_to_frame"]

MAX_PROBLEMS = 20  # reported per request; one bad column in a large file should not make a huge reply


@dataclass(frozen=True)
class Problem:
    """One reason rows cannot be predicted; ``row`` is 0-based, ``None`` when it concerns every row."""

    row: int | None
    column: str | None
    reason: str

    def __str__(self) -> str:
        where = [f"row {self.row}" if self.row is not None else "", f"column '{self.column}'" if self.column else ""]
        return f"{', '.join(w for w in where if w) or 'rows'}: {self.reason}"


class InputError(ValueError):
    """The rows do not fit the model; ``problems`` lists each one (at most :data:`MAX_PROBLEMS`)."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)[:MAX_PROBLEMS]
        super().__init__("; ".join(map(str, self.problems)))


def rows_to_frame(rows: Sequence[Any], columns: Sequence[str]) -> pd.DataFrame:
    """JSON rows -> a frame with the model's raw ``columns``; each row is a list (that order) or a mapping."""
    problems: list[Problem] = []
    records: list[list[Any]] = []
    n = len(columns)
    for i, row in enumerate(rows):
        if isinstance(row, Mapping):
            unknown = [str(k) for k in row if k not in columns]
            problems += [Problem(i, k, "unknown column") for k in unknown]
            problems += [Problem(i, c, "missing column") for c in columns if c not in row]
            records.append([row.get(c) for c in columns])
        elif isinstance(row, Sequence) and not isinstance(row, (str, bytes)):
            if len(row) != n:
                shown = ", ".join(columns[:10]) + (", ..." if n > 10 else "")
                problems.append(Problem(i, None, f"has {len(row)} values; the model takes {n} ({shown})"))
            records.append(list(row))
        else:
            problems.append(Problem(i, None, "must be a list of values or an object keyed by column name"))
        if len(problems) >= MAX_PROBLEMS:
            break
    if problems:
        raise InputError(problems)
    return pd.DataFrame(records, columns=list(columns), dtype=object)


def _huge_int_as_inf(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            float(value)
        except OverflowError:
            return np.inf if value > 0 else -np.inf
    return value


def not_finite_rows(outputs: np.ndarray) -> list[Problem]:
    """A problem for each row whose model output is NaN or infinite (values far outside the training range)."""
    bad = ~np.isfinite(outputs if outputs.ndim == 2 else outputs.reshape(-1, 1)).all(axis=1)
    return [Problem(int(i), None, "the model's output is not finite (values far outside the training data's range?)")
            for i in np.flatnonzero(bad)]


def check_frame(
    frame: pd.DataFrame,
    *,
    columns: Sequence[str],
    numeric: Sequence[str],
    impute: str,
    ignore: Sequence[str] = (),
) -> pd.DataFrame:
    """Validate raw feature rows; return them with the model's ``columns`` in order (numeric as float64).

    Columns in ``ignore`` (e.g. the training target in a re-used file) are dropped; any other extra
    column, or a missing one, is a problem.
    """
    frame = frame.reset_index(drop=True)
    present = [str(c) for c in frame.columns]
    frame.columns = present
    problems = [Problem(None, c, "unknown column") for c in present if c not in columns and c not in ignore]
    problems += [Problem(None, c, "missing column") for c in columns if c not in present]
    if problems:
        raise InputError(problems)
    numeric_set = set(numeric)
    out: dict[str, pd.Series] = {}
    for col in columns:
        s = frame[col]
        missing = s.isna().to_numpy()
        if col in numeric_set:
            is_bool = s.map(lambda v: isinstance(v, (bool, np.bool_))).to_numpy(dtype=bool)
            raw = s.where(~is_bool)
            if raw.dtype == object:  # an integer too large for a float (JSON allows any) is an infinite value
                raw = raw.map(_huge_int_as_inf)
            values = pd.to_numeric(raw, errors="coerce").astype(np.float64)
            for i in np.flatnonzero(~missing & (values.isna().to_numpy() | is_bool)):
                problems.append(Problem(int(i), col, f"not a number: {s.iloc[i]!r}"))
            for i in np.flatnonzero(np.isinf(values.to_numpy())):
                problems.append(Problem(int(i), col, "infinite value"))
            out[col] = values
        else:
            nested = s.map(lambda v: isinstance(v, (list, dict, tuple, set))).to_numpy(dtype=bool)
            for i in np.flatnonzero(nested):  # a JSON list/object is no category (it was silently "unseen")
                problems.append(Problem(int(i), col, f"must be a single value (text or number), not {s.iloc[i]!r}"))
            out[col] = s.astype(object)
        if impute == "none":
            for i in np.flatnonzero(missing):
                problems.append(Problem(int(i), col, "missing value (the model was trained without imputation)"))
        if len(problems) >= MAX_PROBLEMS:
            break
    if problems:
        raise InputError(sorted(problems, key=lambda p: (p.row or 0, list(columns).index(p.column or columns[0]))))
    return pd.DataFrame(out, columns=list(columns))
