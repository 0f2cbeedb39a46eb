"""Data-file size checks read only metadata: NPZ headers (every .npy version and member name) and zip
directory, Parquet footers and string lengths, CSV header width and lines (every line ending)."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from numpy.lib import format as npy_format

from tuner import safeio
from tuner.limits import Limits
from tuner.safeio import (
    MAX_NPZ_MEMBERS,
    DataSize,
    check_data_file,
    check_data_stream,
    measure_data,
    npz_members,
)
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


# ------------------------------------------------------------------ issue 20: nothing escapes the metadata
class _Counting(io.BytesIO):
    """A file that counts what is read from it."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.read_bytes = 0

    def read(self, n: int | None = -1) -> bytes:
        out = super().read(n)
        self.read_bytes += len(out)
        return out


def _zip(members: dict[str, bytes | np.ndarray], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for name, value in members.items():
            if isinstance(value, np.ndarray):
                with zf.open(name, "w") as f:
                    npy_format.write_array(f, value)
            else:
                zf.writestr(name, value)
    return buf.getvalue()


def test_npz_members_of_every_name_form_are_sized(tmp_path: Path) -> None:
    # np.load finds "X" whether the member is "X.npy" or "X": both are checked (the unsuffixed form was not)
    for names in (("X.npy", "y.npy"), ("X", "y"), ("X", "y.npy")):
        data = _zip({names[0]: np.zeros((100, 50)), names[1]: np.zeros(100)})
        size = measure_data(io.BytesIO(data), "a.npz", "f")
        assert size == DataSize(rows=100, columns=0, cells=5_100, nbytes=40_800), names
        with pytest.raises(SpecError, match=r"holds 5,100 values"):
            check_data_stream(io.BytesIO(data), "a.npz", "f", Limits(max_cells=5_099))
        path = tmp_path / "a.npz"
        path.write_bytes(data)
        assert set(npz_members(path)) == {"X", "y"}


def test_npz_raw_member_is_sized_from_the_zip_directory_without_inflating() -> None:
    # a member without a .npy header is returned by np.load as raw bytes: its size is the directory's file_size
    data = _zip({"X": b"\0" * (64 * 2**20), "y": np.zeros(3)})
    assert len(data) < 100_000
    f = _Counting(data)
    size = measure_data(f, "bomb.npz", "f")
    assert size is not None and size.nbytes == 64 * 2**20 + 24
    assert f.read_bytes < 200_000  # the compressed member was not read, let alone inflated
    with pytest.raises(SpecError) as exc:
        check_data_stream(io.BytesIO(data), "bomb.npz", "dataset.path", Limits(max_decompressed_bytes=32 * 2**20))
    assert exc.value.errors == [("dataset.path: bomb.npz would take 64 MiB in memory once decompressed, more than "
                                "the limit of 32 MiB")]


def test_npz_structure_refused_before_loading() -> None:
    many = _zip({f"a{i}": b"" for i in range(MAX_NPZ_MEMBERS + 1)}, zipfile.ZIP_STORED)
    with pytest.raises(SpecError, match=rf"has {MAX_NPZ_MEMBERS + 1} members"):
        measure_data(io.BytesIO(many), "m.npz", "f")
    # a header declaring more data than the member holds (np.load would allocate it, then fail)
    head = io.BytesIO()
    npy_format.write_array_header_1_0(head, {"descr": "<f8", "fortran_order": False, "shape": (2**27,)})
    with pytest.raises(SpecError, match=r"array 'X' in t.npz is truncated: its header declares 1,073,741,824 bytes"):
        measure_data(io.BytesIO(_zip({"X.npy": head.getvalue(), "y.npy": np.zeros(1)})), "t.npz", "f")
    with pytest.raises(SpecError, match=r"f: cannot read n.npz: File is not a zip file"):
        measure_data(io.BytesIO(b"not a zip"), "n.npz", "f")
    # bzip2/lzma members: zipfile inflates a whole input block at once, unbounded (deflate is bounded)
    with pytest.raises(SpecError, match=r"member 'X.npy' of b.npz is compressed with method 12; only stored or "
                                        r"deflated members are accepted"):
        measure_data(io.BytesIO(_zip({"X.npy": np.zeros(3)}, zipfile.ZIP_BZIP2)), "b.npz", "f")


def _parquet(table: pa.Table, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, **kwargs)
    return buf.getvalue()


def test_parquet_string_columns_are_sized_by_their_decoded_lengths() -> None:
    # 100,000 rows of one 2,000-character string: a 25 KB file, 200 MB of text once decoded (the dictionary
    # array is written as a plain string column, store_schema=False, so it is read back as strings)
    repeated = pa.DictionaryArray.from_arrays(pa.array(np.zeros(100_000, dtype=np.int32)), pa.array(["x" * 2000]))
    bomb = _parquet(pa.table({"s": repeated, "y": np.zeros(100_000)}), store_schema=False, compression="zstd")
    assert len(bomb) < 40_000
    lim = Limits(max_decompressed_bytes=64 * 2**20)
    with pytest.raises(SpecError, match=r"f: s.parquet would take \d+ MiB in memory once decompressed, more than "
                                        r"the limit of 64 MiB"):
        check_data_stream(io.BytesIO(bomb), "s.parquet", "f", lim)
    # exact below the limit: 8 bytes a cell plus the strings' bytes, dictionary-encoded or plain
    words = [f"value-{i}" for i in range(1000)]
    expected = 1000 * 2 * 8 + sum(map(len, words))
    for kwargs in ({}, {"use_dictionary": False}):
        data = _parquet(pa.table({"s": words, "n": np.arange(1000)}), **kwargs)
        assert measure_data(io.BytesIO(data), "w.parquet", "f", lim) == DataSize(1000, 2, 2000, expected)


def test_parquet_width_and_nesting_refused_from_the_footer() -> None:
    lim = Limits(max_features=10)
    wide = _parquet(pa.table({f"c{i}": [0] for i in range(12)}))
    with pytest.raises(SpecError) as exc:
        measure_data(io.BytesIO(wide), "w.parquet", "f", lim)
    assert exc.value.errors == ["f: w.parquet has more than 11 columns; the limit is 10 features and the target"]
    assert measure_data(io.BytesIO(_parquet(pa.table({f"c{i}": [0] for i in range(11)}))), "ok.parquet", "f", lim)
    nested = _parquet(pa.table({"a": [[1, 2], [3]], "y": [0, 1]}))
    with pytest.raises(SpecError, match=r"column 'a' of n.parquet is nested"):
        measure_data(io.BytesIO(nested), "n.parquet", "f", lim)
    # the footer's lists are bounded while it is parsed (a footer costs ~10x its size in memory)
    wider = _parquet(pa.table({f"c{i}": pa.array([0], pa.int8()) for i in range(10_003)}), store_schema=False)
    with pytest.raises(SpecError) as exc:
        measure_data(io.BytesIO(wider), "w.parquet", "f")
    assert exc.value.errors == [("f: w.parquet has more than 10,002 columns or row groups; the limit is 10,000 "
                                "features and the target")]


def test_parquet_footer_is_bounded_before_it_is_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    data = _parquet(pa.table({f"c{i}": [0] for i in range(100)}))
    footer = int.from_bytes(data[-8:-4], "little")
    monkeypatch.setattr(safeio, "_MAX_PARQUET_FOOTER", footer - 1)
    opened: list[object] = []
    monkeypatch.setattr(pq, "ParquetFile", lambda *a, **k: opened.append(a))
    with pytest.raises(SpecError, match=r"f: m.parquet has 0.0 MiB of metadata, more than the limit of .* MiB "
                                        r"\(too many columns or row groups\)"):
        measure_data(io.BytesIO(data), "m.parquet", "f")
    assert opened == []


def test_csv_width_is_judged_from_a_bounded_prefix_of_the_header() -> None:
    header = ",".join(f"c{i}" for i in range(1_000_000)).encode()  # 6.9 MB header line
    f = _Counting(header + b"\n" + b"1," * 999_999 + b"1\n")
    with pytest.raises(SpecError) as exc:
        measure_data(f, "w.csv", "dataset.path")
    assert exc.value.errors == [("dataset.path: w.csv has more than 10,001 columns; the limit is 10,000 features "
                                "and the target")]
    assert f.read_bytes <= 2**20  # refused within the first chunk
    # separators inside quotes do not count; a header of exactly the limit passes
    lim = Limits(max_features=2)
    assert measure_data(io.BytesIO(b'"a,b",c,y\n1,2,3\n'), "q.csv", "f", lim) == DataSize(1, 3, 3, 3 * 8 + 16)
    with pytest.raises(SpecError, match="more than 3 columns"):
        measure_data(io.BytesIO(b"a,b,c,y\n1,2,3,4\n"), "q.csv", "f", lim)


@pytest.mark.parametrize("end", [b"\n", b"\r\n", b"\r"])
def test_csv_rows_are_counted_with_every_line_ending(end: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    body = end.join([b"a,b,y", b"1,2,0", b"", b"3,4,1", b"5,6,0"]) + end + end  # blank lines are not rows
    for chunk in (1 << 20, 1, 2, 3, 5):  # a \r\n split between chunks is one line end
        monkeypatch.setattr(safeio, "_CHUNK", chunk)
        assert measure_data(io.BytesIO(body), "d.csv", "f") == DataSize(3, 3, 9, 9 * 8 + len(body)), chunk
        assert measure_data(io.BytesIO(body.rstrip(end)), "d.csv", "f").rows == 3  # type: ignore[union-attr]
    twin = end.join([b"a,b,y"] + [b"1,2,0"] * 700)
    with pytest.raises(SpecError, match="holds 2,100 values"):
        check_data_stream(io.BytesIO(twin), "d.csv", "f", Limits(max_cells=2_000))
