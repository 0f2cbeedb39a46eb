"""Data-file size checks read only metadata: NPZ headers (every .npy version), Parquet footers, CSV lines."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from numpy.lib import format as npy_format

from tuner.limits import Limits
from tuner.safeio import check_data_file, npz_members
from tuner.spec import SpecError


def test_npz_headers_of_every_version(tmp_path: Path) -> None:
    path = tmp_path / "a.npz"
    with zipfile.ZipFile(path, "w") as zf:
        for version, name in (((1, 0), "X"), ((2, 0), "y"), ((3, 0), "z")):
            with zf.open(f"{name}.npy", "w") as f:
                npy_format.write_array(f, np.zeros((5, 3), dtype=np.float32), version=version)
    assert npz_members(path) == {n: ((5, 3), np.dtype(np.float32)) for n in ("X", "y", "z")}
    check_data_file(path, "dataset.path", Limits(max_decompressed_bytes=180))
    with pytest.raises(SpecError, match="more than the limit of 0 MiB"):
        check_data_file(path, "dataset.path", Limits(max_decompressed_bytes=179))


def test_parquet_and_csv_cells(tmp_path: Path) -> None:
    frame = pd.DataFrame({"a": np.arange(100), "b": ["x"] * 100})
    frame.to_parquet(tmp_path / "d.parquet")
    frame.to_csv(tmp_path / "d.csv", index=False)
    for name in ("d.parquet", "d.csv"):
        check_data_file(tmp_path / name, "dataset.path", Limits(max_cells=200))
        with pytest.raises(SpecError) as exc:
            check_data_file(tmp_path / name, "dataset.path", Limits(max_cells=199))
        assert exc.value.errors == [f"dataset.path: {name} holds 200 values (rows x columns), more than the limit of 199"]
