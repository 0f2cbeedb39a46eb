"""Size checks on a data file from its metadata, before anything is decompressed or loaded.

A small compressed file can expand to gigabytes (an NPZ of zeros, a zstd Parquet of one repeated value).
:func:`check_data_file` reads only what describes the data (each NPZ member's ``.npy`` header, the
Parquet footer, a CSV's header line and line count) and refuses, with ``where: reason`` lines, a file whose
loaded size would pass :class:`tuner.limits.Limits`'s ``max_decompressed_bytes`` or ``max_cells``.
"""

from __future__ import annotations

import math
import zipfile
from pathlib import Path
from typing import IO

import numpy as np
from numpy.lib import format as npy_format

from tuner.limits import Limits, current
from tuner.spec import SpecError

__all__ = ["check_data_file", "npz_members"]

# A pandas cell costs at least 8 bytes (float64 / int64 / a pointer to a string).
_CELL_BYTES = 8
_LINE_CHUNK = 1 << 20


def check_data_file(path: Path, where: str, limits: Limits | None = None) -> None:
    """Raise :class:`SpecError` when loading ``path`` would take more memory than the limits allow."""
    lim = limits or current()
    suffix = path.suffix.lower()
    try:
        if suffix == ".npz":
            nbytes, cells = _npz_size(path, where)
        elif suffix in (".parquet", ".pq"):
            nbytes, cells = _parquet_size(path)
        elif suffix == ".csv":
            nbytes, cells = _csv_size(path)
        else:
            return
    except SpecError:
        raise
    except Exception as exc:  # noqa: BLE001 - unreadable metadata is the user's data error
        raise SpecError([f"{where}: cannot read {path.name}: {exc}"]) from None
    errors = []
    if cells > lim.max_cells:
        errors.append(f"{where}: {path.name} holds {cells:,} values (rows x columns), more than the limit of "
                      f"{lim.max_cells:,}")
    if nbytes > lim.max_decompressed_bytes:
        errors.append(f"{where}: {path.name} would take {_mib(nbytes)} in memory once decompressed, more than "
                      f"the limit of {_mib(lim.max_decompressed_bytes)}")
    if errors:
        raise SpecError(errors)


def _mib(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB"


def npz_members(path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """``{array name: (shape, dtype)}`` of an NPZ, read from each member's ``.npy`` header only."""
    out: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            if not info.filename.endswith(".npy"):
                continue
            with zf.open(info) as member:
                shape, dtype = _npy_header(member)
            out[info.filename[: -len(".npy")]] = (shape, dtype)
    return out


def _npy_header(fp: IO[bytes]) -> tuple[tuple[int, ...], np.dtype]:
    version = npy_format.read_magic(fp)
    if version == (1, 0):
        shape, _fortran, dtype = npy_format.read_array_header_1_0(fp)
    elif version == (2, 0):
        shape, _fortran, dtype = npy_format.read_array_header_2_0(fp)
    else:  # (3, 0): utf-8 field names; numpy has no public reader for it
        from numpy.lib import _format_impl

        shape, _fortran, dtype = _format_impl._read_array_header(fp, version)  # type: ignore[attr-defined]
    return tuple(int(s) for s in shape), np.dtype(dtype)


def _npz_size(path: Path, where: str) -> tuple[int, int]:
    nbytes = cells = 0
    for name, (shape, dtype) in npz_members(path).items():
        if dtype.hasobject:
            raise SpecError([(f"{where}: array '{name}' in {path.name} holds Python objects; "
                             "only numeric arrays are accepted")])
        n = math.prod(shape)
        cells += n
        nbytes += n * dtype.itemsize
    return nbytes, cells


def _parquet_size(path: Path) -> tuple[int, int]:
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(path).metadata
    cells = meta.num_rows * meta.num_columns
    encoded = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
    # Dictionary/RLE pages stay small after decompression; pandas still needs a slot per value.
    return max(encoded, cells * _CELL_BYTES), cells


def _csv_size(path: Path) -> tuple[int, int]:
    lines = 0
    header = b""
    with path.open("rb") as f:
        while chunk := f.read(_LINE_CHUNK):
            if not header:
                header = chunk.split(b"\n", 1)[0]
            lines += chunk.count(b"\n")
        columns = header.count(b",") + 1
    cells = max(0, lines - 1) * columns
    return cells * _CELL_BYTES, cells
