"""Size checks on a data file from its metadata, before anything is decompressed or loaded.

A small compressed file can expand to gigabytes (an NPZ of zeros, a zstd Parquet of one repeated value, a
Parquet column of one long string repeated), and a wide CSV costs seconds per column before any limit is
seen. :func:`check_data_file` (a path) and :func:`check_data_stream` (an open binary file, e.g. an upload
spooled by the server) read only what describes the data and refuse, with ``where: reason`` lines, a file
whose loaded size would pass :class:`tuner.limits.Limits`'s ``max_decompressed_bytes``, ``max_cells`` or
``max_features``:

- NPZ: the zip's central directory (at most :data:`MAX_NPZ_MEMBERS` members, read only after its size is
  checked) and, for every member whatever its name (``X``, ``X.npy``, ``dir/X.npy``: ``np.load`` reads
  them all alike), the ``.npy`` header from a bounded read (shape and dtype give the loaded size); a
  member that is not ``.npy`` is loaded as raw bytes, so its size is the directory's ``file_size``.
- Parquet: the footer (rows, columns, each column chunk's uncompressed size and physical type); string
  and binary columns are measured by their decoded lengths, read as dictionary indices in bounded batches
  (the strings themselves are never decoded), because a dictionary page of one long value repeated on
  every row is tiny on disk and huge in memory.
- CSV: the header line (quote-aware, read in bounded chunks: a file wider than the feature limit is
  refused as soon as that many separators are seen) and the rows, counted with every line ending
  (``\\n``, ``\\r\\n`` and ``\\r``; blank lines skipped as pandas does).

:func:`measure_data` returns the same figures (:class:`DataSize`) for callers that apply limits of their
own (the service's per-request row limit on ``/predict``).
"""

from __future__ import annotations

import io
import math
import re
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
from numpy.lib import format as npy_format

from tuner.limits import Limits, current
from tuner.spec import SpecError

__all__ = [
    "MAX_NPZ_MEMBERS", "DataSize", "check_data_file", "check_data_stream", "limit_errors", "measure_data", "npz_members",
]

# A pandas cell costs at least 8 bytes (float64 / int64 / a pointer to a string).
_CELL_BYTES = 8
_CHUNK = 1 << 20
# An NPZ holds the arrays X and y; a few more are tolerated, not thousands (each costs a ZipInfo object).
MAX_NPZ_MEMBERS = 100
_MAX_CENTRAL_DIRECTORY = 1 << 20
# What is read of a member to parse its .npy header (numpy itself refuses headers over 10,000 bytes).
_NPY_HEAD = 16 * 1024
_NPZ_COMPRESSION = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)
# Rows per batch when a Parquet string column is measured (as dictionary indices: 4 bytes a row).
_PARQUET_BATCH = 64 * 1024
# The Parquet footer: at most this long (a 10,000-column file with statistics takes a few MiB), and at
# most this many entries in each of its lists unless the feature limit asks for more.
_MAX_PARQUET_FOOTER = 8 * 2**20
_MIN_PARQUET_LIST = 10_000
_FORMATS = {".npz": "npz", ".parquet": "parquet", ".pq": "parquet", ".csv": "csv"}


@dataclass(frozen=True)
class DataSize:
    """What loading a file would take: data ``rows`` (a CSV's: an upper bound, a quoted line break counts),
    ``columns`` (NPZ: 0), ``cells`` (rows x columns; NPZ: values of every array) and ``nbytes`` in memory."""

    rows: int
    columns: int
    cells: int
    nbytes: int


def check_data_file(path: Path, where: str, limits: Limits | None = None) -> None:
    """Raise :class:`SpecError` when loading ``path`` would take more memory than the limits allow."""
    path = Path(path)
    if path.suffix.lower() not in _FORMATS:
        return
    with path.open("rb") as fp:
        check_data_stream(fp, path.name, where, limits)


def check_data_stream(fp: IO[bytes], name: str, where: str, limits: Limits | None = None) -> DataSize | None:
    """:func:`check_data_file` for an open, seekable binary file named ``name`` (its suffix gives the format);
    returns the file's :class:`DataSize` (``None`` for a format it does not know) and leaves ``fp`` at 0."""
    lim = limits or current()
    size = measure_data(fp, name, where, lim)
    if size is None:
        return None
    errors = limit_errors(size, name, where, lim)
    if errors:
        raise SpecError(errors)
    return size


def limit_errors(size: DataSize, name: str, where: str, limits: Limits | None = None) -> list[str]:
    """The ``where: reason`` lines for a :class:`DataSize` past ``max_cells`` or ``max_decompressed_bytes``."""
    lim = limits or current()
    errors = []
    if size.cells > lim.max_cells:
        errors.append(f"{where}: {name} holds {size.cells:,} values (rows x columns), more than the limit of "
                      f"{lim.max_cells:,}")
    if size.nbytes > lim.max_decompressed_bytes:
        errors.append(f"{where}: {name} would take {_mib(size.nbytes)} in memory once decompressed, more than "
                      f"the limit of {_mib(lim.max_decompressed_bytes)}")
    return errors


def measure_data(fp: IO[bytes], name: str, where: str, limits: Limits | None = None) -> DataSize | None:
    """The :class:`DataSize` of an open, seekable file from its metadata (``None``: not CSV/Parquet/NPZ).

    Raises :class:`SpecError` for what makes the file unusable whatever the limits on cells and bytes
    (unreadable metadata, object arrays, nested Parquet columns, more NPZ members than
    :data:`MAX_NPZ_MEMBERS`) and for a table wider than ``max_features`` plus a target column, which is
    refused as soon as that is seen. ``fp`` is rewound to 0 afterwards.
    """
    lim = limits or current()
    fmt = _FORMATS.get(Path(name).suffix.lower())
    if fmt is None:
        return None
    try:
        fp.seek(0)
        if fmt == "npz":
            return _npz_size(fp, name, where)
        if fmt == "parquet":
            return _parquet_size(fp, name, where, lim)
        return _csv_size(fp, name, where, lim)
    except SpecError:
        raise
    except Exception as exc:  # noqa: BLE001 - unreadable metadata is the user's data error
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SpecError([f"{where}: cannot read {name}: {reason}"]) from None
    finally:
        fp.seek(0)


def _mib(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB"


def _too_wide(where: str, name: str, lim: Limits) -> SpecError:
    return SpecError([(f"{where}: {name} has more than {lim.max_features + 1:,} columns; the limit is "
                      f"{lim.max_features:,} features and the target")])


# ------------------------------------------------------------------------------------------------- NPZ
@contextmanager
def _open_zip(fp: IO[bytes], name: str, where: str) -> Iterator[zipfile.ZipFile]:
    """The zip, opened only after its end record says the central directory is small."""
    end = zipfile._EndRecData(fp)  # type: ignore[attr-defined]  # the record ZipFile itself reads first
    if end is None:
        raise SpecError([f"{where}: cannot read {name}: File is not a zip file"])
    entries, directory = int(end[zipfile._ECD_ENTRIES_TOTAL]), int(end[zipfile._ECD_SIZE])  # type: ignore[attr-defined]
    if entries > MAX_NPZ_MEMBERS or directory > _MAX_CENTRAL_DIRECTORY:
        raise SpecError([(f"{where}: {name} has {entries:,} members ({directory:,} bytes of zip directory); an NPZ "
                         f"file needs only the arrays X and y (at most {MAX_NPZ_MEMBERS} members)")])
    fp.seek(0)
    with zipfile.ZipFile(fp) as zf:
        if len(zf.infolist()) > MAX_NPZ_MEMBERS:
            raise SpecError([(f"{where}: {name} has more than {MAX_NPZ_MEMBERS} members; an NPZ file needs only "
                             "the arrays X and y")])
        yield zf


def _npz_entries(
    zf: zipfile.ZipFile, name: str, where: str
) -> Iterator[tuple[zipfile.ZipInfo, tuple[tuple[int, ...], np.dtype, int] | None]]:
    """Each member with ``(shape, dtype, header length)`` from its ``.npy`` header, or ``None`` when the
    member is not ``.npy`` (``np.load`` returns such a member as raw bytes)."""
    for info in zf.infolist():
        if info.is_dir():
            continue
        if info.compress_type not in _NPZ_COMPRESSION:
            # zipfile inflates bzip2/lzma input without a bound on the output: a few KB can be gigabytes
            raise SpecError([(f"{where}: member '{info.filename}' of {name} is compressed with method "
                             f"{info.compress_type}; only stored or deflated members are accepted (what "
                             "np.savez and np.savez_compressed write)")])
        with zf.open(info) as member:
            head = member.read(_NPY_HEAD)  # decompresses at most this much
        if not head.startswith(npy_format.MAGIC_PREFIX):
            yield info, None
            continue
        buf = io.BytesIO(head)
        shape, dtype = _npy_header(buf)
        yield info, (shape, dtype, buf.tell())


def npz_members(path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """``{array name: (shape, dtype)}`` of an NPZ's ``.npy`` members (``X.npy`` and ``X`` are both ``X``),
    read from each member's header only."""
    with Path(path).open("rb") as fp, _open_zip(fp, Path(path).name, "npz") as zf:
        return {info.filename.removesuffix(".npy"): header[:2] for info, header in _npz_entries(zf, Path(path).name, "npz")
                if header is not None}


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


def _npz_size(fp: IO[bytes], name: str, where: str) -> DataSize:
    nbytes = cells = rows = 0
    with _open_zip(fp, name, where) as zf:
        for info, header in _npz_entries(zf, name, where):
            member = info.filename
            if header is None:  # loaded as raw bytes: as large as the directory says (zipfile stops there)
                nbytes += info.file_size
                continue
            shape, dtype, head_len = header
            array = member.removesuffix(".npy")
            if dtype.hasobject:
                raise SpecError([(f"{where}: array '{array}' in {name} holds Python objects; "
                                  "only numeric arrays are accepted")])
            n = math.prod(shape)
            size = n * dtype.itemsize
            if head_len + size > info.file_size:
                raise SpecError([(f"{where}: array '{array}' in {name} is truncated: its header declares {size:,} "
                                 f"bytes of data, the member holds {max(0, info.file_size - head_len):,}")])
            cells += n
            nbytes += size
            if array == "X" and shape:
                rows = shape[0]
    return DataSize(rows=rows, columns=0, cells=cells, nbytes=nbytes)


# --------------------------------------------------------------------------------------------- Parquet
_VARIABLE = {"BYTE_ARRAY"}
_FIXED = {"BOOLEAN": 1, "INT32": 4, "INT64": 8, "INT96": 12, "FLOAT": 4, "DOUBLE": 8}


def _parquet_size(fp: IO[bytes], name: str, where: str, lim: Limits) -> DataSize:
    import pyarrow.parquet as pq

    # The footer (Thrift) costs ~10 times its size to parse: bounded before it is parsed, and so are its
    # lists (columns, row groups, chunks of a row group).
    fp.seek(0, io.SEEK_END)
    total = fp.tell()
    if total >= 12:
        fp.seek(total - 8)
        tail = fp.read(8)
        footer = int.from_bytes(tail[:4], "little")
        if tail[4:] == b"PAR1" and footer > _MAX_PARQUET_FOOTER:
            raise SpecError([(f"{where}: {name} has {footer / 2**20:,.1f} MiB of metadata, more than the limit of "
                             f"{_MAX_PARQUET_FOOTER / 2**20:g} MiB (too many columns or row groups)")])
    fp.seek(0)
    max_list = max(lim.max_features + 2, _MIN_PARQUET_LIST)
    try:
        meta = pq.ParquetFile(fp, thrift_container_size_limit=max_list).metadata
    except OSError as exc:
        if "size limit" not in str(exc).lower():  # Thrift's limit on a list (strings fit: the footer is small)
            raise
        raise SpecError([(f"{where}: {name} has more than {max_list:,} columns or row groups; the limit is "
                         f"{lim.max_features:,} features and the target")]) from None
    schema = meta.schema
    columns = [schema.column(i) for i in range(meta.num_columns)]
    nested = [".".join(c.path.split(".")[:1]) for c in columns if c.max_repetition_level > 0 or "." in c.path]
    if nested:
        raise SpecError([(f"{where}: column '{nested[0]}' of {name} is nested (a list, map or struct); only flat "
                         "columns of numbers or text are accepted")])
    width = sum(1 for c in columns if not c.name.startswith("__index_level_"))
    if width > lim.max_features + 1:
        raise _too_wide(where, name, lim)
    rows = meta.num_rows
    cells = rows * meta.num_columns
    encoded = 0
    fixed = 0
    for r in range(meta.num_row_groups):
        group = meta.row_group(r)
        for i in range(group.num_columns):
            chunk = group.column(i)
            encoded += chunk.total_uncompressed_size
            if chunk.physical_type == "FIXED_LEN_BYTE_ARRAY":  # bytes (or decimals) beside the cell's slot
                fixed += chunk.num_values * columns[i].length
    if encoded > lim.max_decompressed_bytes:  # pages decompress one by one; each is within this
        return DataSize(rows=rows, columns=meta.num_columns, cells=cells, nbytes=encoded)
    base = cells * _CELL_BYTES + fixed
    variable = [c.name for c in columns if c.physical_type in _VARIABLE]
    budget = lim.max_decompressed_bytes - base
    strings = _parquet_string_bytes(fp, meta, variable, budget) if variable and budget >= 0 else 0
    return DataSize(rows=rows, columns=meta.num_columns, cells=cells, nbytes=max(encoded, base + strings))


def _parquet_string_bytes(fp: IO[bytes], meta: Any, names: list[str], budget: int) -> int:
    """The decoded bytes of the string/binary columns ``names``, from dictionary indices read in bounded
    batches: each batch costs 4 bytes a row plus its dictionary, never the decoded strings. Stops once
    past ``budget`` (the total so far is then returned)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    fp.seek(0)
    total = 0
    reader = pq.ParquetFile(fp, metadata=meta, read_dictionary=names)
    # per column: its current dictionary (held, so its buffer address stays its own) and the values' lengths
    lengths: dict[str, tuple[pa.Array, tuple[int, int], pa.Array]] = {}
    for batch in reader.iter_batches(batch_size=_PARQUET_BATCH, columns=names, use_pandas_metadata=False):
        for name, column in zip(batch.schema.names, batch.columns):
            if not pa.types.is_dictionary(column.type):
                total += int(pc.sum(pc.binary_length(column)).as_py() or 0)
                continue
            dictionary = column.dictionary
            key = (dictionary.buffers()[1].address if dictionary.buffers()[1] is not None else 0, len(dictionary))
            if name not in lengths or lengths[name][1] != key:
                lengths[name] = (dictionary, key, pc.binary_length(dictionary))
            total += int(pc.sum(pc.take(lengths[name][2], column.indices)).as_py() or 0)
        if total > budget:
            break
    return total


# ------------------------------------------------------------------------------------------------- CSV
_BLANK_RUN = re.compile(rb"\n\n+")


def _csv_size(fp: IO[bytes], name: str, where: str, lim: Limits) -> DataSize:
    max_columns = lim.max_features + 1
    chunks = _chunks(fp)
    # The header: separators outside quotes up to the first line end outside quotes (a quote toggles the
    # state; an escaped "" toggles it twice). Refused as soon as it is wider than the limit.
    commas = 0
    inside = False
    started = False  # pandas skips blank lines before the header
    rest = b""
    size = 0
    for chunk in chunks:
        size += len(chunk)
        if not started:
            chunk = chunk.lstrip(b"\r\n")
            if not chunk:
                continue
            started = True
        end = -1
        offset = 0
        for k, part in enumerate(chunk.split(b'"')):
            if k:
                inside = not inside
                offset += 1
            if not inside:
                cut = _line_end(part)
                if cut >= 0:
                    commas += part.count(b",", 0, cut)
                    end = offset + cut
                    break
                commas += part.count(b",")
                if commas >= max_columns:
                    raise _too_wide(where, name, lim)
            offset += len(part)
        if commas >= max_columns:
            raise _too_wide(where, name, lim)
        if end >= 0:
            rest = chunk[end:]
            break
    columns = commas + 1 if started else 0
    # The rows: non-blank lines after the header, whatever their line ending.
    lines = 0
    at_line_start = True  # the header's own line end comes first in ``rest``
    carry = b""
    for k, chunk in enumerate(_prepend(rest, chunks)):
        if k:  # ``rest`` was counted with its chunk
            size += len(chunk)
        data = carry + chunk
        carry = b""
        if data.endswith(b"\r"):  # may be the first half of \r\n: decide with the next chunk
            data, carry = data[:-1], b"\r"
        text = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        if not text:
            continue
        squeezed = _BLANK_RUN.sub(b"\n", text)
        ends = squeezed.count(b"\n")
        if at_line_start and squeezed.startswith(b"\n"):
            ends -= 1  # a blank line after the previous line end
        lines += ends
        at_line_start = text.endswith(b"\n")
    if not at_line_start:
        lines += 1  # the last line, ended by no line end or by a final \r
    rows = lines
    cells = rows * columns
    return DataSize(rows=rows, columns=columns, cells=cells, nbytes=cells * _CELL_BYTES + size)


def _chunks(fp: IO[bytes]) -> Iterator[bytes]:
    while chunk := fp.read(_CHUNK):
        yield chunk


def _prepend(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    yield first
    yield from rest


def _line_end(part: bytes) -> int:
    ends = [i for i in (part.find(b"\n"), part.find(b"\r")) if i >= 0]
    return min(ends) if ends else -1
