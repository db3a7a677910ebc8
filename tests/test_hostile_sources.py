"""Hostile PhysioNet 2012 inputs: damaged archives, garbage inside one stay file, links, a RecordID that names
another stay, and clock times that are not times. Each class is checked on every path that reads a set:
``read_physionet`` (prepare/train/evaluate/predict) and the batch scorer's index pass and chunk reads
(``chunks.index_physionet`` / ``chunks.read_chunks``). The rule: every stay is kept or rejected with a reason,
and an archive that does not read to its end is a ``DataError``, never a shorter set."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path, PurePath

import numpy as np
import polars as pl
import pytest
from helpers import HEADER, stay_text, tiny_model, write_physionet_set

from clinical_lstm.data.catalogue import Catalogue
from clinical_lstm.data.chunks import check_unique_ids, index_physionet, plan_chunks, read_chunks
from clinical_lstm.data.load import load
from clinical_lstm.data.physionet import read_physionet
from clinical_lstm.data.sources import DataError
from clinical_lstm.data.times import CLOCK_TIME, parse_time
from clinical_lstm.data.validate import validate
from clinical_lstm.serve.batch import score_batch

N_STAYS = 300
FIRST_ID = 150000
# Two ordinary stays (the helper adds RecordID, Age, Gender, Height, ICUType, Weight at 00:00).
GOOD = {140001: [("00:07", "GCS", "15"), ("01:30", "HR", "88"), ("36:30", "pH", "7.35")],
        140002: [("00:15", "HR", "102"), ("02:00", "HR", "99")]}


def many_stays(n: int = N_STAYS, seed: int = 0) -> dict[int, list]:
    """``n`` stays of 30 HR/MAP/Temp rows each, irregular times, values that do not compress to nothing."""
    rng = np.random.default_rng(seed)
    stays = {}
    for k in range(n):
        minutes = np.sort(rng.integers(0, 48 * 60, 30))
        stays[FIRST_ID + k] = [(f"{m // 60:02d}:{m % 60:02d}", v, f"{rng.normal(mu, 5):.1f}")
                               for m, (v, mu) in zip(minutes, [("HR", 85), ("MAP", 75), ("Temp", 37)] * 10,
                                                     strict=True)]
    return stays


def read_in_chunks(path: Path, chunk_stays: int = 2):
    """The batch scorer's two passes over a set: (index, [RawData of every chunk])."""
    inp = index_physionet(path)
    chunks = plan_chunks([inp], chunk_stays)
    return inp, [raw for _, raw in read_chunks(inp, chunks, {c.index for c in chunks}, None)]


def chunked(path: Path, chunk_stays: int = 2) -> tuple[list[int], dict[int, str], pl.DataFrame, int]:
    """(stays, unreadable, long rows, ignored members) as the batch scorer sees a set."""
    inp, raws = read_in_chunks(path, chunk_stays)
    stays = sorted(s for r in raws for s in r.stays.to_list())
    unreadable = {k: v for r in raws for k, v in r.unreadable.items()}
    long = pl.concat([r.long for r in raws]).sort("stay_id", maintain_order=True)
    assert stays == sorted(inp.stay_ids.tolist())
    return stays, unreadable, long, inp.ignored_members


def rule_counts(raw) -> dict[tuple[str, str | None], int]:
    _, _, report = validate(raw, Catalogue.default())
    return {(r["rule"], r["variable"]): r["rows"] for r in report.counts.iter_rows(named=True)}


# -- 1. damaged archives: every entry point raises, none returns fewer stays ------------------------------
@pytest.fixture(scope="module")
def tar_bytes(tmp_path_factory) -> bytes:
    """The uncompressed tar of a 300-stay set (members ``set-x/``, 300 stay files, ``README.txt``)."""
    root = tmp_path_factory.mktemp("damage")
    archive = write_physionet_set(root, many_stays(), archive=True, write_outcomes=False)
    return gzip.decompress(archive.read_bytes())


def header_offsets(tar: bytes) -> dict[str, int]:
    """Member name -> byte offset of its header in ``tar``."""
    with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
        return {m.name: m.offset for m in tf.getmembers()}


def stay_position(name: str) -> int:
    """How many stay files come before ``set-x/<id>.txt`` in the archive (written in name order)."""
    return int(PurePath(name).stem) - FIRST_ID


def end_of_members(tar: bytes) -> int:
    with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
        last = tf.getmembers()[-1]
        return last.offset_data + -(-last.size // 512) * 512


MIDDLE = f"set-x/{FIRST_ID + 150}.txt"


def _flip(data: bytes, at: int, n: int = 32) -> bytes:
    return data[:at] + bytes(b ^ 0xFF for b in data[at:at + n]) + data[at + n:]


def damaged(tar: bytes, how: str) -> tuple[bytes, str, int | None]:
    """``(archive bytes, suffix, stay files read before the damage or None when it depends on zlib)``."""
    gz = gzip.compress(tar, mtime=0)
    offsets = header_offsets(tar)
    mid = offsets[MIDDLE]
    if how.startswith("flip-"):  # flipped compressed bytes: zlib error, or garbage, then a bad checksum
        return _flip(gz, int(len(gz) * float(how[5:]))), ".tar.gz", None
    if how == "cut-trailer":  # the deflate stream is whole, the CRC and length are not there
        return gz[:-8], ".tar.gz", None  # found when the read-ahead reaches the end
    if how.startswith("cut-"):  # truncated compressed stream
        return gz[:int(len(gz) * float(how[4:]))], ".tar.gz", None
    if how == "bad-crc":  # every byte decompresses; only gzip's checksum tells
        return gz[:-8] + bytes(4) + gz[-4:], ".tar.gz", None
    if how == "stored-garbage-header":  # uncompressed deflate blocks: the flip decompresses into a bad tar header
        stored = gzip.compress(tar, compresslevel=0, mtime=0)
        before = tar[mid - 2048:mid]  # the end of the member before: unique, unlike a header block
        at = stored.index(before) + len(before)
        assert stored[at:at + 512] == tar[mid:mid + 512]  # no deflate block header in between
        return _flip(stored, at, 100), ".tar.gz", stay_position(MIDDLE)
    if how == "valid-gzip-garbage-header":  # a bad tar header inside an intact gzip
        return gzip.compress(_flip(tar, mid, 512), mtime=0), ".tar.gz", stay_position(MIDDLE)
    if how == "valid-gzip-zeroed-header":  # two zero blocks mid-archive look like its end; members follow
        return gzip.compress(tar[:mid] + bytes(1024) + tar[mid + 1024:], mtime=0), ".tar.gz", stay_position(MIDDLE)
    if how == "valid-gzip-cut-at-member":  # the tar ends cleanly at a header boundary, without its end marker
        return gzip.compress(tar[:mid], mtime=0), ".tar.gz", stay_position(MIDDLE)
    if how == "valid-gzip-no-end-marker":  # every member, then no zero blocks
        return gzip.compress(tar[:end_of_members(tar)], mtime=0), ".tar.gz", N_STAYS
    if how == "valid-gzip-one-zero-block":
        return gzip.compress(tar[:end_of_members(tar)] + bytes(512), mtime=0), ".tar.gz", N_STAYS
    if how == "valid-gzip-data-after-end":
        return gzip.compress(tar + b"x" * 512, mtime=0), ".tar.gz", N_STAYS
    if how == "junk-after-gzip":  # a whole gzip member, then bytes that are not another one
        return gz + b"junk", ".tar.gz", None
    if how == "bz2-cut":
        return bz2.compress(tar, 1)[:-100], ".tar", None  # 100 kB blocks: the first ones are whole
    if how == "xz-flip":
        data = lzma.compress(tar)
        return _flip(data, len(data) // 2), ".tar", None
    if how == "plain-tar-cut-at-member":
        return tar[:mid], ".tar", stay_position(MIDDLE)
    if how == "plain-tar-cut-in-member":
        return tar[:tar.index(b"00:00,RecordID,%d" % (FIRST_ID + 150)) + 100], ".tar", stay_position(MIDDLE)
    raise ValueError(how)


DAMAGE = ["flip-0.2", "flip-0.5", "flip-0.8", "flip-0.97", "flip-0.999", "cut-0.3", "cut-0.6", "cut-0.99",
          "cut-trailer", "bad-crc", "stored-garbage-header", "valid-gzip-garbage-header",
          "valid-gzip-zeroed-header", "valid-gzip-cut-at-member", "valid-gzip-no-end-marker",
          "valid-gzip-one-zero-block", "valid-gzip-data-after-end", "junk-after-gzip", "bz2-cut", "xz-flip",
          "plain-tar-cut-at-member", "plain-tar-cut-in-member"]


def check_damage_error(exc: pytest.ExceptionInfo, path: Path, read_before: int | None) -> None:
    m = re.fullmatch(re.escape(f"{path}: the archive is damaged after ") + r"(\d+)"
                     + re.escape(" stay files were read (") + r".+" + re.escape(
                         "); nothing from it was used: re-download or re-export it"), str(exc.value))
    assert m, str(exc.value)
    if read_before is None:
        assert int(m.group(1)) <= N_STAYS
    else:
        assert int(m.group(1)) == read_before


@pytest.mark.parametrize("how", DAMAGE)
def test_damaged_archive_raises_on_every_read_path(tmp_path, tar_bytes, how):
    data, suffix, read_before = damaged(tar_bytes, how)
    path = tmp_path / f"set-x{suffix}"
    path.write_bytes(data)
    with pytest.raises(DataError) as exc:
        read_physionet(path)
    check_damage_error(exc, path, read_before)
    with pytest.raises(DataError) as exc:
        load([path])
    check_damage_error(exc, path, read_before)
    with pytest.raises(DataError) as exc:
        index_physionet(path)
    check_damage_error(exc, path, read_before)


@pytest.mark.parametrize("how", ["flip-0.5", "bad-crc", "valid-gzip-cut-at-member", "valid-gzip-zeroed-header"])
def test_archive_damaged_after_the_index_pass_fails_the_chunk_reads(tmp_path, tar_bytes, how):
    path = tmp_path / "set-x.tar.gz"
    path.write_bytes(gzip.compress(tar_bytes, mtime=0))
    inp = index_physionet(path)
    assert len(inp.stay_ids) == N_STAYS
    chunks = plan_chunks([inp], 40)
    data, _, read_before = damaged(tar_bytes, how)
    path.write_bytes(data)
    with pytest.raises(DataError) as exc:
        list(read_chunks(inp, chunks, {c.index for c in chunks}, None))
    check_damage_error(exc, path, read_before)
    with pytest.raises(DataError) as exc:  # resuming: finished chunks are skipped unread, the checks still run
        list(read_chunks(inp, chunks, {chunks[0].index}, None))
    check_damage_error(exc, path, read_before)


def test_intact_archive_reads_every_stay_on_every_path(tmp_path, tar_bytes):
    path = tmp_path / "set-x.tar.gz"
    path.write_bytes(gzip.compress(tar_bytes, mtime=0))
    raw = read_physionet(path)
    assert raw.stays.to_list() == list(range(FIRST_ID, FIRST_ID + N_STAYS))
    assert raw.long.height == N_STAYS * 35 and raw.unreadable == {} and raw.ignored_members == 1
    stays, unreadable, long, ignored = chunked(path, 40)
    assert stays == raw.stays.to_list() and unreadable == {} and ignored == 1
    assert long.equals(raw.long)
    for name, data in [("plain", tar_bytes), ("bz2", bz2.compress(tar_bytes)), ("xz", lzma.compress(tar_bytes)),
                       ("zero-padded gzip", gzip.compress(tar_bytes, mtime=0) + bytes(100))]:
        other = tmp_path / name / "set-x.tar"
        other.parent.mkdir()
        other.write_bytes(data)
        assert read_physionet(other).long.equals(raw.long), name


def test_damaged_archive_is_exit_code_2_for_the_scorer(tmp_path, tar_bytes):
    path = tmp_path / "set-x.tar.gz"
    path.write_bytes(damaged(tar_bytes, "valid-gzip-cut-at-member")[0])
    out = tmp_path / "out" / "scores.parquet"
    with pytest.raises(DataError, match=re.escape(f"{path}: the archive is damaged after 150 stay files")):
        score_batch(tiny_model(), path, out, chunk_stays=40, log=lambda _: None)
    assert not out.exists()
    res = subprocess.run([sys.executable, "-m", "clinical_lstm.cli", "prepare", "--data", str(path), "--out",
                          str(tmp_path / "prepared")], capture_output=True, text=True, cwd=tmp_path, timeout=300,
                         env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert res.returncode == 2, res.stderr
    assert "the archive is damaged after 150 stay files were read" in res.stderr
    assert "Traceback" not in res.stderr


# -- 2. garbage inside one stay file: that stay is rejected (or read by rule), the others still read ----------
def good_file(rid: int, newline: str = "\n") -> bytes:
    return stay_text(rid, [("00:30", "HR", "80"), ("01:00", "HR", "82")], newline=newline).encode()


UNREADABLE = {
    "latin-1 value": good_file(140003) + b"02:00,HR,8\xe90\n",
    "latin-1 parameter": good_file(140003).replace(b"HR", b"H\xc9R", 1),
    "cp1252 quote in the header": b"Time,Parameter,Value\x92\n00:00,Age,50\n",
    "overlong utf-8": good_file(140003) + b"02:00,HR,\xc0\xb0\n",
    "utf-16 with BOM": good_file(140003).decode().encode("utf-16"),
    "header lower case": good_file(140003).replace(b"Time,Parameter,Value", b"time,parameter,value"),
    "header spaced": good_file(140003).replace(b"Time,Parameter,Value", b"Time, Parameter, Value"),
    "header with semicolons": good_file(140003).replace(b"Time,Parameter,Value", b"Time;Parameter;Value"),
    "CR-only line ends": good_file(140003, newline="\r"),
    "empty file": b"",
    "blank line before the header": b"\n" + good_file(140003),
}


@pytest.mark.parametrize("content", UNREADABLE.values(), ids=UNREADABLE.keys())
@pytest.mark.parametrize("archive", [False, True], ids=["folder", "tar.gz"])
def test_garbage_in_one_stay_file_rejects_only_that_stay(physionet_set, archive, content):
    path = physionet_set({**GOOD, 140003: content, 140004: good_file(140004)}, archive=archive)
    alone = read_physionet(physionet_set({**GOOD, 140004: good_file(140004)}))
    raw = read_physionet(path)
    assert raw.unreadable == {140003: "unreadable_file"}
    assert raw.stays.to_list() == [140001, 140002, 140003, 140004]
    assert raw.long.equals(alone.long)
    stays, unreadable, long, _ = chunked(path)
    assert stays == [140001, 140002, 140003, 140004]
    assert unreadable == {140003: "unreadable_file"}
    assert long.equals(alone.long)


READ_BY_RULE = {  # each reads exactly like the plain file good_file(140003)
    "UTF-8 byte-order mark": b"\xef\xbb\xbf" + good_file(140003),
    "BOM and CRLF": b"\xef\xbb\xbf" + good_file(140003, newline="\r\n"),
    "blanks around the header": good_file(140003).replace(b"Value\n", b"Value  \n").replace(b"Time", b" Time", 1),
    "blank lines inside and at the end": good_file(140003).replace(b"\n00:30", b"\n\n  \n00:30") + b"\n\n",
    "a fourth field": good_file(140003).replace(b"01:00,HR,82", b"01:00,HR,82,extra"),
}


@pytest.mark.parametrize("content", READ_BY_RULE.values(), ids=READ_BY_RULE.keys())
@pytest.mark.parametrize("archive", [False, True], ids=["folder", "tar.gz"])
def test_harmless_variants_read_like_the_plain_file(physionet_set, archive, content):
    plain = read_physionet(physionet_set({140003: good_file(140003)}))
    raw = read_physionet(physionet_set({140003: content}, archive=archive))
    assert raw.unreadable == {}
    assert raw.long.equals(plain.long)
    assert raw.long.filter(pl.col("variable") == "HR")["time"].to_list() == [0.5, 1.0]


@pytest.mark.parametrize("last_line, counted", [
    (b"36:3", ("unknown_variable", "")),  # no comma: a time without a parameter
    (b"36", ("unparseable_time", "")),
    (b"36:30,H", ("unknown_variable", "H")),
    (b"36:30,HR", ("unparseable_value", "HR")),
    (b"36:30,HR,", ("unparseable_value", "HR")),
    (b"36:30,Temp\xc3\xa9rature,37", ("unknown_variable", "Temp\u00e9rature")),  # valid UTF-8: read
])
@pytest.mark.parametrize("archive", [False, True], ids=["folder", "tar.gz"])
def test_a_truncated_last_line_is_counted_not_lost(physionet_set, archive, last_line, counted):
    path = physionet_set({140003: good_file(140003) + last_line}, archive=archive)
    raw = read_physionet(path)
    assert raw.unreadable == {}
    assert raw.long.height == 8  # 5 descriptors, 2 HR rows, the last line
    assert rule_counts(raw) == {counted: 1}
    assert chunked(path)[2].equals(raw.long)


# -- 3. links and other non-regular entries named like stay files ---------------------------------------------
def _add(tf: tarfile.TarFile, name: str, data: bytes | None = None, **attrs) -> None:
    info = tarfile.TarInfo(name)
    for k, v in attrs.items():
        setattr(info, k, v)
    if data is not None:
        info.size = len(data)
    tf.addfile(info, io.BytesIO(data) if data is not None else None)


def archive_with_links(path: Path) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        _add(tf, "set-x", type=tarfile.DIRTYPE, mode=0o755)
        for rid in GOOD:
            _add(tf, f"set-x/{rid}.txt", stay_text(rid, GOOD[rid]).encode())
        _add(tf, "set-x/README.txt", b"not a stay\n")
        _add(tf, "set-x/140003.txt", type=tarfile.LNKTYPE, linkname="set-x/140001.txt")  # hard link
        _add(tf, "set-x/140004.txt", type=tarfile.SYMTYPE, linkname="140001.txt")
        _add(tf, "set-x/140005.txt", type=tarfile.FIFOTYPE)
        _add(tf, "set-x/140006.txt", type=tarfile.DIRTYPE, mode=0o755)
        _add(tf, "set-x/notes", type=tarfile.SYMTYPE, linkname="README.txt")  # not named like a stay
        _add(tf, "set-x/copy.txt", type=tarfile.LNKTYPE, linkname="set-x/README.txt")
        _add(tf, "set-x/sub", type=tarfile.DIRTYPE, mode=0o755)
    return path


def folder_with_links(root: Path) -> Path:
    folder = write_physionet_set(root, GOOD)  # with README.txt
    (folder / "140004.txt").symlink_to("140001.txt")
    (folder / "140006.txt").mkdir()
    os.mkfifo(folder / "140005.txt")  # a FIFO: opening it would block
    (folder / "140007.txt").symlink_to(root / "nowhere.txt")  # a dangling link
    (folder / "notes").symlink_to("README.txt")
    (folder / "extra").mkdir()  # a sub-folder: its files are read (none here), as in an archive; not counted
    return folder


@pytest.mark.parametrize("form", ["tar.gz", "folder"])
def test_links_named_like_stay_files_are_rejected_stays(physionet_set, tmp_path, form):
    if form == "tar.gz":
        path = archive_with_links(tmp_path / "set-x.tar.gz")
        links, ignored = [140003, 140004, 140005, 140006], 3  # README.txt, notes, copy.txt
    else:
        path = folder_with_links(tmp_path / "f")
        links, ignored = [140004, 140005, 140006, 140007], 2  # README.txt, notes
    alone = read_physionet(physionet_set(GOOD))
    raw = read_physionet(path)
    assert raw.stays.to_list() == sorted([*GOOD, *links])
    assert raw.unreadable == dict.fromkeys(links, "unreadable_file")
    assert raw.ignored_members == ignored
    assert raw.long.equals(alone.long)
    stays, unreadable, long, chunk_ignored = chunked(path)
    assert (stays, unreadable, chunk_ignored) == (raw.stays.to_list(), raw.unreadable, ignored)
    assert long.equals(alone.long)


def test_two_stay_files_with_one_record_id_are_refused(tmp_path):
    path = tmp_path / "set-x.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        for name in ("set-x/140001.txt", "set-x/140002.txt", "set-x/old/140001.txt"):
            rid = int(PurePath(name).stem)
            _add(tf, name, stay_text(rid, GOOD[rid]).encode())
    message = f"{path}: stay 140001 appears more than once (two stay files with the same RecordID)"
    with pytest.raises(DataError, match=re.escape(message)):
        read_physionet(path)
    with pytest.raises(DataError, match=re.escape("set-x.tar.gz: stay 140001 appears more than once")):
        check_unique_ids([index_physionet(path)])  # the batch scorer's check


def test_a_stay_file_that_cannot_be_opened_is_a_rejected_stay(physionet_set, monkeypatch):
    folder = physionet_set({**GOOD, 140003: good_file(140003)})
    open_ = Path.open

    def refuse(self, *args, **kwargs):  # tests run as root, so chmod 000 would not stop the read
        if self.name == "140003.txt":
            raise PermissionError(13, "Permission denied", str(self))
        return open_(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", refuse)
    raw = read_physionet(folder)
    assert raw.unreadable == {140003: "unreadable_file"}
    assert raw.stays.to_list() == [140001, 140002, 140003]
    assert chunked(folder)[1] == {140003: "unreadable_file"}


# -- 4. a RecordID row naming another stay ----------------------------------------------------------------------
def with_record_id(*values: str) -> bytes:
    rows = "".join(f"00:00,RecordID,{v}\n" for v in values)
    return f"{HEADER}\n{rows}00:00,Age,50\n00:30,HR,80\n".encode()


@pytest.mark.parametrize("values, rejected", [
    (("999",), True),
    (("140001",), True),  # a copy of another stay of the set under a new name
    (("",), True),
    (("abc",), True),
    (("140003.5",), True),
    (("140003", "999"), True),
    (("140003",), False),
    (("140003.0",), False),  # the same number
    (("-1",), False),  # PhysioNet's "not recorded"
    ((), False),  # no RecordID row
], ids=lambda v: repr(v) if isinstance(v, tuple) else str(v))
@pytest.mark.parametrize("archive", [False, True], ids=["folder", "tar.gz"])
def test_record_id_row_must_name_the_files_stay(physionet_set, archive, values, rejected):
    path = physionet_set({**GOOD, 140003: with_record_id(*values)}, archive=archive)
    raw = read_physionet(path)
    assert raw.stays.to_list() == [140001, 140002, 140003]
    assert raw.unreadable == ({140003: "record_id_mismatch"} if rejected else {})
    assert raw.long.filter(pl.col("stay_id") == 140003).height == (0 if rejected else 2)
    assert "RecordID" not in raw.long["variable"].to_list()
    assert raw.long.filter(pl.col("stay_id") != 140003).height == 15  # GOOD untouched
    stays, unreadable, long, _ = chunked(path)
    assert (stays, unreadable) == ([140001, 140002, 140003], raw.unreadable)
    assert long.equals(raw.long)
    _, kept, report = validate(raw, Catalogue.default())
    assert (140003 in kept.to_list()) is not rejected
    assert report.rejects.rows() == ([(140003, "record_id_mismatch")] if rejected else [])


def test_record_id_with_spaces_around_the_parameter_is_still_checked(physionet_set):
    content = f"{HEADER}\n00:00, RecordID ,999\n00:30,HR,80\n".encode()
    raw = read_physionet(physionet_set({**GOOD, 140003: content}))
    assert raw.unreadable == {140003: "record_id_mismatch"}


# -- 5. clock times that are not times ------------------------------------------------------------------------
BAD_TIMES = ["25:99", "1:-30", "-0:-30", "1:5:0", "12:60", " 1:30", "1:30 ", "+1:30", "1.5:30", ":30", "1:",
             "1:300", "0x1:30", "1:3O", "--1:30", "1 :30", "１:30", "12"]
NEGATIVE = ["-00:30", "-0:30", "-1:05"]
VALID = {"00:00": 0.0, "1:5": 1 + 5 / 60, "01:05": 1 + 5 / 60, "47:59": 47 + 59 / 60, "0048:00": 48.0}


def stay_with_times(times) -> list:
    return [(t, "HR", str(80 + i)) for i, t in enumerate(times)]


@pytest.mark.parametrize("archive", [False, True], ids=["folder", "tar.gz"])
def test_invalid_clock_times_are_unparseable_times(physionet_set, archive):
    path = physionet_set({140005: stay_with_times([*VALID, *BAD_TIMES, *NEGATIVE])}, archive=archive)
    for long in (read_physionet(path).long, pl.concat([r.long for r in read_in_chunks(path)[1]])):
        hr = long.filter(pl.col("variable") == "HR")
        assert hr.height == len(VALID) + len(BAD_TIMES) + len(NEGATIVE)  # no row lost or shifted
        times = dict(zip(hr["value"].cast(pl.Int64).to_list(), hr["time"].to_list(), strict=True))
        got = [times[80 + i] for i in range(hr.height)]
        assert got == [*VALID.values(), *[None] * len(BAD_TIMES), -0.5, -0.5, -(1 + 5 / 60)]
    assert rule_counts(read_physionet(path)) == {("unparseable_time", "HR"): len(BAD_TIMES),
                                                 ("negative_time", "HR"): len(NEGATIVE),
                                                 ("same_time_conflict", "HR"): 1}  # 1:5 and 01:05


@pytest.mark.parametrize("archive", [False, True], ids=["folder", "tar.gz"])
def test_one_bad_time_does_not_move_the_other_rows(physionet_set, archive):
    rows = [("00:07", "GCS", "15"), ("-00:30", "HR", "70"), ("01:30", "HR", "88"), ("36:30", "pH", "7.35")]
    plain = read_physionet(physionet_set({140001: rows}, archive=archive))
    bad = read_physionet(physionet_set({140001: [*rows, ("25:99", "HR", "90")]}, archive=archive))
    assert bad.long.head(plain.long.height).equals(plain.long)
    assert bad.long.row(-1) == (140001, None, "HR", 90.0)
    assert plain.long.filter(pl.col("variable") == "HR")["time"].to_list() == [-0.5, 1.5]


def test_physionet_times_follow_validate_parse_time(physionet_set):
    """The PhysioNet reader and ``validate.parse_time`` share the clock-time rule (``validate.CLOCK_TIME``);
    they differ only where the long format allows more: blanks around a time (stripped there) and a plain
    number of hours (``12``), neither of which is a PhysioNet clock time."""
    times = [t for t in [*VALID, *BAD_TIMES, *NEGATIVE] if t == t.strip() and ":" in t]
    raw = read_physionet(physionet_set({140005: stay_with_times(times)}))
    hr = raw.long.filter(pl.col("variable") == "HR").sort("value")
    expected = pl.DataFrame({"time": times}).select(parse_time(pl.col("time"))).to_series()
    assert hr["time"].to_list() == expected.to_list()


def test_random_time_fields_follow_the_clock_time_rule(physionet_set):
    """Fuzz: 400 stays of three rows each, time fields drawn from digits, ``:``, signs, blanks, ``.``, ``e``,
    ``_``, ``x``, ``b`` and non-ASCII digits. Stays whose lines all look ordinary take the fast path, the others the per-line one; the
    time read must be exactly what :data:`CLOCK_TIME` (ASCII digits) gives, or null."""
    rng = np.random.default_rng(7)
    alphabet = list("0123456789:::-+ .e_xb") + ["\u0663", "\uff11"]
    stays, expected = {}, {}
    for k in range(400):
        rows = []
        for j in range(3):
            kind = rng.random()
            if kind < 0.6:  # valid times, so that some whole stays take the fast path
                t = f"{rng.integers(0, 120):0{rng.integers(1, 4)}d}:{rng.integers(0, 60):0{rng.integers(1, 3)}d}"
            elif kind < 0.8:  # ordinary-looking, minutes 0-99 in one to three digits
                t = f"{rng.integers(0, 120)}:{rng.integers(0, 100):0{rng.integers(1, 4)}d}"
            else:
                t = "".join(rng.choice(alphabet, rng.integers(0, 7)))
            rows.append((t, "HR", str(j)))
            m = re.fullmatch(CLOCK_TIME, t, re.ASCII)
            hours = None if m is None else (int(m[2]) + int(m[3]) / 60) * (-1 if m[1] else 1)
            expected[(FIRST_ID + k, j)] = hours
        stays[FIRST_ID + k] = rows
    raw = read_physionet(physionet_set(stays))
    hr = raw.long.filter(pl.col("variable") == "HR")
    got = {(sid, int(v)): t for sid, t, v in hr.select("stay_id", "time", "value").iter_rows()}
    assert got.keys() == expected.keys()
    wrong = {key: (got[key], want) for key, want in expected.items()
             if (got[key] is None) != (want is None) or (want is not None and abs(got[key] - want) > 1e-12)}
    assert wrong == {}


# -- every class at once, through the batch scorer ------------------------------------------------------------
def test_batch_scorer_accounts_for_every_hostile_stay(tmp_path):
    path = tmp_path / "set-x.tar.gz"
    good = {rid: stay_with_times([f"{h:02d}:00" for h in range(0, 48, 4)]) for rid in range(140001, 140006)}
    with tarfile.open(path, "w:gz") as tf:
        for rid, rows in good.items():
            _add(tf, f"set-x/{rid}.txt", stay_text(rid, rows).encode())
        _add(tf, "set-x/140006.txt", good_file(140006) + b"02:00,HR,8\xe90\n")  # not UTF-8
        _add(tf, "set-x/140007.txt", type=tarfile.LNKTYPE, linkname="set-x/140001.txt")
        _add(tf, "set-x/140008.txt", type=tarfile.SYMTYPE, linkname="140001.txt")
        _add(tf, "set-x/140009.txt", with_record_id("140001"))
        _add(tf, "set-x/README.txt", b"not a stay\n")
    out = tmp_path / "out" / "scores.parquet"
    summary = score_batch(tiny_model(), path, out, chunk_stays=3, log=lambda _: None)
    rejects = dict(pl.read_parquet(out.parent / "scores.parquet.rejects.parquet").iter_rows())
    assert rejects == {140006: "unreadable_file", 140007: "unreadable_file", 140008: "unreadable_file",
                       140009: "record_id_mismatch"}
    assert summary["stays_read"] == 9 and summary["scored"] == 5 and summary["rejected"] == 4
    assert summary["rejected_by_reason"] == {"unreadable_file": 3, "record_id_mismatch": 1}
    assert summary["inputs"][0]["ignored_members"] == 1
