"""Tests for clinical_lstm.data.sources: the PhysioNet 2012 reader (folder and .tar.gz), the generic long
CSV/Parquet reader, labels files and ``load`` across several paths. Expected values are worked out by
hand from the tiny sets written in each test."""

from __future__ import annotations

import re

import polars as pl
import pytest
from helpers import write_physionet_set

from clinical_lstm.data.catalogue import Catalogue
from clinical_lstm.data.load import load
from clinical_lstm.data.physionet import find_outcomes, read_outcomes, read_physionet
from clinical_lstm.data.sources import LONG_COLUMNS, DataError, read_labels, read_long
from clinical_lstm.data.validate import validate

# Two stays; the helper writes the 00:00 descriptors (RecordID, then Age 64, Gender 1, Height 172.7,
# ICUType 3, Weight 81.5) before these time-series rows.
STAYS = {
    140001: [("00:07", "GCS", "15"), ("01:30", "HR", "88"), ("36:30", "pH", "7.35")],
    140002: [("00:15", "HR", "102")],
}
OUTCOMES = {140001: (-1, 2, 5, 3, 1), 140002: (14, 3, 8, -1, 0)}  # SAPS-I, SOFA, LoS, Survival, death


def descriptor_rows(rid: int) -> list[tuple[int, float, str, float]]:
    return [(rid, 0.0, "Age", 64.0), (rid, 0.0, "Gender", 1.0), (rid, 0.0, "Height", 172.7),
            (rid, 0.0, "ICUType", 3.0), (rid, 0.0, "Weight", 81.5)]


# HH:MM -> hours: 00:07 = 7/60 h, 01:30 = 1.5 h, 36:30 = 36.5 h, 00:15 = 0.25 h; values parsed as numbers.
EXPECTED_ROWS = [
    *descriptor_rows(140001),
    (140001, 7 / 60, "GCS", 15.0),
    (140001, 1.5, "HR", 88.0),
    (140001, 36.5, "pH", 7.35),
    *descriptor_rows(140002),
    (140002, 0.25, "HR", 102.0),
]


def write(path, text: str):
    path.write_text(text)
    return path


# -- PhysioNet layout ----------------------------------------------------------------------------------
def test_folder_is_read_into_the_long_table(physionet_set):
    raw = read_physionet(physionet_set(STAYS, outcomes=OUTCOMES))
    assert raw.long.columns == list(LONG_COLUMNS)
    assert raw.long.rows() == EXPECTED_ROWS  # 8 + 6 rows, RecordID rows gone
    assert raw.stays.to_list() == [140001, 140002]
    assert raw.stays.dtype == pl.Int64
    assert raw.unreadable == {}
    assert raw.sources == ["set-x"]


def test_folder_and_tar_gz_give_identical_tables(physionet_set):
    folder = physionet_set(STAYS, outcomes=OUTCOMES)
    archive = physionet_set(STAYS, outcomes=OUTCOMES, archive=True)
    assert archive.name == "set-x.tar.gz" and not (archive.parent / "set-x").exists()
    a, b = read_physionet(folder), read_physionet(archive)
    assert a.long.equals(b.long)
    assert b.long.rows() == EXPECTED_ROWS
    assert a.stays.equals(b.stays)
    assert a.outcomes.equals(b.outcomes)
    assert a.unreadable == b.unreadable == {}
    assert a.ignored_members == b.ignored_members == 1  # README.txt in both
    assert b.sources == ["set-x.tar.gz"]


def test_record_id_rows_dropped_and_stay_id_comes_from_file_name(physionet_set):
    # RecordID rows that agree with the file name (or are absent) are dropped; the id is the file name's.
    path = physionet_set({140003: [("02:00", "HR", "75")], 140004: [("03:00", "HR", "76")]},
                         descriptors={140004: {"RecordID": None}})
    raw = read_physionet(path)
    assert "RecordID" not in raw.long["variable"].to_list()
    assert raw.long["stay_id"].unique().sort().to_list() == [140003, 140004]
    assert raw.long.height == 12  # Age, Gender, Height, ICUType, Weight, HR per stay
    assert raw.unreadable == {}


def test_record_id_row_naming_another_stay_rejects_the_stay(physionet_set):
    # 140003.txt says it is stay 999: its rows may belong to another stay, so none are used.
    path = physionet_set({140003: [("02:00", "HR", "75")], **STAYS}, descriptors={140003: {"RecordID": 999}})
    raw = read_physionet(path)
    assert raw.unreadable == {140003: "record_id_mismatch"}
    assert raw.stays.to_list() == [140001, 140002, 140003]
    assert raw.long.rows() == EXPECTED_ROWS


def test_hh_mm_times_become_hours(physionet_set):
    raw = read_physionet(physionet_set(STAYS))
    assert raw.long.schema == {"stay_id": pl.Int64, "time": pl.Float64, "variable": pl.String,
                               "value": pl.Float64}
    assert raw.long.filter(pl.col("variable") == "pH")["time"].to_list() == [36.5]
    assert set(raw.long["time"]) == {0.0, 7 / 60, 1.5, 36.5, 0.25}


def test_crlf_stay_files_read_like_lf(physionet_set):
    lf = read_physionet(physionet_set(STAYS))
    crlf = read_physionet(physionet_set(STAYS, newline="\r\n"))
    assert crlf.long.equals(lf.long)
    assert crlf.long.rows() == EXPECTED_ROWS


def test_unparseable_entries_stay_visible_and_are_counted(physionet_set):
    stays = {140005: [("01:00", "HR", "80"), ("02:00", "HR", "abc"), ("1:xx", "HR", "81"), ("03:00", "HR", "")]}
    raw = read_physionet(physionet_set(stays))
    hr = raw.long.filter(pl.col("variable") == "HR")
    assert hr.height == 4  # no row lost or shifted
    assert hr["value"].null_count() == 2  # "abc" and ""
    assert hr["time"].null_count() == 1  # "1:xx"
    _, kept, report = validate(raw, Catalogue.default())
    got = {(r["rule"], r["variable"]): r["rows"] for r in report.counts.iter_rows(named=True)}
    assert got == {("unparseable_time", "HR"): 1, ("unparseable_value", "HR"): 2}
    assert kept.to_list() == [140005]


@pytest.mark.parametrize("bad_time", ["12", "12:30:00"])
def test_malformed_time_is_still_charged_to_its_parameter(physionet_set, bad_time):
    raw = read_physionet(physionet_set({140006: [("01:00", "HR", "80"), (bad_time, "HR", "81")]}))
    assert set(raw.long["variable"]) == {"Age", "Gender", "Height", "ICUType", "Weight", "HR"}
    assert raw.long.filter(pl.col("variable") == "HR").height == 2


@pytest.mark.parametrize("archive", [False, True], ids=["folder", "tar.gz"])
def test_outcomes_found_beside_the_set(physionet_set, archive):
    path = physionet_set(STAYS, outcomes=OUTCOMES, archive=archive)
    assert find_outcomes(path) == path.parent / "Outcomes-x.txt"
    out = read_physionet(path).outcomes
    assert out.columns == ["stay_id", "label", "saps_i"]
    assert out.schema == {"stay_id": pl.Int64, "label": pl.Int8, "saps_i": pl.Float64}
    # 140001: SAPS-I -1 (not recorded) -> null, died; 140002: SAPS-I 14, survived.
    assert sorted(out.rows()) == [(140001, 1, None), (140002, 0, 14.0)]


def test_outcomes_never_carry_survival_or_length_of_stay(physionet_set):
    out = read_physionet(physionet_set(STAYS, outcomes=OUTCOMES)).outcomes
    assert not {"Survival", "Length_of_stay", "SOFA", "In-hospital_death"} & set(out.columns)
    # the Survival (3) and Length_of_stay (5, 8) numbers do not appear anywhere either
    assert set(out["saps_i"].drop_nulls().to_list()) == {14.0}


def test_outcomes_override(physionet_set, tmp_path):
    path = physionet_set(STAYS, outcomes=OUTCOMES)  # beside it: 140001 died, 140002 survived
    other = write(tmp_path / "my-outcomes.txt",
                  "RecordID,SAPS-I,SOFA,Length_of_stay,Survival,In-hospital_death\n"
                  "140001,20,1,4,-1,0\n140002,-1,1,4,2,1\n")
    out = read_physionet(path, outcomes=other).outcomes
    assert sorted(out.rows()) == [(140001, 0, 20.0), (140002, 1, None)]


def test_no_outcomes_when_none_beside_the_set(physionet_set):
    path = physionet_set(STAYS, write_outcomes=False)
    assert read_physionet(path).outcomes is None
    # a folder not named set-<x> has no outcomes to find, even with an Outcomes file around
    renamed = physionet_set(STAYS, name="y")
    renamed = renamed.rename(renamed.parent / "ward7")
    assert find_outcomes(renamed) is None
    assert read_physionet(renamed).outcomes is None


def test_outcomes_file_without_label_column(tmp_path):
    bad = write(tmp_path / "Outcomes-q.txt", "RecordID,SAPS-I\n1,10\n")
    with pytest.raises(DataError, match=re.escape("must have columns ['In-hospital_death', 'RecordID']")):
        read_outcomes(bad)


@pytest.mark.parametrize("archive", [False, True], ids=["folder", "tar.gz"])
def test_non_stay_member_ignored(physionet_set, archive):
    path = physionet_set(STAYS, archive=archive,
                         extras={"README.txt": b"123\n", "140003.csv": b"Time,Parameter,Value\n"})
    raw = read_physionet(path)
    assert raw.stays.to_list() == [140001, 140002]
    assert raw.ignored_members == 2
    assert raw.long.rows() == EXPECTED_ROWS
    assert raw.unreadable == {}


@pytest.mark.parametrize("content", [b"Time,Parameter,Value\n", b"Time,Parameter,Value\r\n",
                                     b"Time,Parameter,Value"], ids=["lf", "crlf", "no-newline"])
@pytest.mark.parametrize("archive", [False, True], ids=["folder", "tar.gz"])
def test_header_only_stay_is_still_a_stay(physionet_set, archive, content):
    raw = read_physionet(physionet_set({**STAYS, 140004: content}, archive=archive))
    assert raw.stays.to_list() == [140001, 140002, 140004]
    assert 140004 not in raw.unreadable
    assert raw.long.filter(pl.col("stay_id") == 140004).height == 0
    assert raw.long.height == 14


@pytest.mark.parametrize("archive", [False, True], ids=["folder", "tar.gz"])
def test_garbage_or_wrong_header_is_unreadable(physionet_set, archive):
    garbage = {
        140008: b"\x00\x9f\x13\xffgarbage\n\x00\x01",  # binary, no header
        140009: b"Time,Param,Val\n00:00,Age,50\n",  # wrong header
        140010: b"Time,Parameter,Value\n00:00,Age,5\x000\n",  # right header, NUL bytes in the body
    }
    raw = read_physionet(physionet_set({**STAYS, **garbage}, archive=archive))
    assert raw.unreadable == {140008: "unreadable_file", 140009: "unreadable_file", 140010: "unreadable_file"}
    assert raw.stays.to_list() == [140001, 140002, 140008, 140009, 140010]
    assert raw.long.rows() == EXPECTED_ROWS  # nothing from the unreadable files


def test_set_without_stay_files(physionet_set):
    path = physionet_set({})
    with pytest.raises(DataError, match=r"holds no stay files \(<RecordID>\.txt with header 'Time,Parameter,Value'\)"):
        read_physionet(path)


def test_tar_gz_that_is_not_an_archive(tmp_path):
    bad = tmp_path / "set-x.tar.gz"
    bad.write_bytes(b"this is not gzip")
    with pytest.raises(DataError, match=re.escape(f"{bad} is not a readable tar archive")):
        read_physionet(bad)


# -- generic long format -------------------------------------------------------------------------------
def test_long_csv_keeps_time_and_value_as_text(tmp_path):
    path = write(tmp_path / "data.csv",
                 "stay_id,time,variable,value,unit\n"
                 "2,0,Age,54,years\n"
                 "1,0.5,HR,88,bpm\n"
                 "2,01:15,HR,abc,bpm\n")
    raw = read_long(path)
    assert raw.long.columns == list(LONG_COLUMNS)  # the extra 'unit' column is dropped
    assert raw.long.schema == {"stay_id": pl.Int64, "time": pl.String, "variable": pl.String,
                               "value": pl.String}
    assert raw.long.rows() == [(2, "0", "Age", "54"), (1, "0.5", "HR", "88"), (2, "01:15", "HR", "abc")]
    assert raw.stays.to_list() == [1, 2]
    assert raw.outcomes is None
    assert raw.unreadable == {}
    assert raw.sources == ["data.csv"]


def test_long_parquet(tmp_path):
    df = pl.DataFrame({"stay_id": [7, 3, 7], "time": [0.0, 0.5, 12.25], "variable": ["Age", "HR", "HR"],
                       "value": [70.0, 88.0, 90.0], "note": ["a", "b", "c"]})
    path = tmp_path / "data.parquet"
    df.write_parquet(path)
    raw = read_long(path)
    assert raw.long.rows() == [(7, 0.0, "Age", 70.0), (3, 0.5, "HR", 88.0), (7, 12.25, "HR", 90.0)]
    assert raw.long.schema["time"] == pl.Float64
    assert raw.stays.to_list() == [3, 7]


def test_long_csv_missing_column(tmp_path):
    path = write(tmp_path / "data.csv", "stay_id,time,variable\n1,0,HR\n")
    expected = (f"data file {path} lacks column(s) ['value']; expected exactly "
                f"['stay_id', 'time', 'variable', 'value'], found ['stay_id', 'time', 'variable']")
    with pytest.raises(DataError, match=re.escape(expected)):
        read_long(path)


def test_text_stay_ids_are_kept_exactly_as_given(tmp_path):
    path = write(tmp_path / "data.csv", "stay_id,time,variable,value\nP-17,0,HR,80\n007,1,HR,81\n"
                                      "9b2f1c4e-3d5a-4e0b-8f1c-2a7d6e9b0c11,2,HR,82\n 007 ,3,HR,83\n")
    raw = read_long(path)
    assert raw.long.schema["stay_id"] == pl.String  # "007" is not the number 7: every id stays text
    assert raw.stays.to_list() == ["007", "9b2f1c4e-3d5a-4e0b-8f1c-2a7d6e9b0c11", "P-17"]  # blanks around stripped


def test_integer_spelled_ids_are_integers(tmp_path):
    raw = read_long(write(tmp_path / "data.csv", "stay_id,time,variable,value\n12,0,HR,80\n-3,1,HR,81\n"))
    assert raw.long.schema["stay_id"] == pl.Int64 and raw.stays.to_list() == [-3, 12]


@pytest.mark.parametrize("ids, message", [([1.0, 1.5], "stay_id 1.5 names no stay"),
                                          ([1.0, float("nan")], "stay_id nan names no stay"),
                                          ([1.0, None], "stay_id None names no stay")])
def test_a_fractional_missing_or_nan_id_names_no_stay(tmp_path, ids, message):
    """Two fractional ids (5.5, 5.9) must never become one patient: the same contract for files and frames."""
    df = pl.DataFrame({"stay_id": ids, "time": [0.0, 1.0], "variable": ["HR", "HR"], "value": [80.0, 81.0]},
                      schema_overrides={"stay_id": pl.Float64})
    df.write_parquet(tmp_path / "d.parquet")
    with pytest.raises(DataError, match=re.escape(message)):
        read_long(tmp_path / "d.parquet")
    from clinical_lstm.serve.bundle import as_raw

    with pytest.raises(DataError, match=r"the long table, row 2: stay_id \S+ names no stay"):  # pandas NaN is None
        as_raw(df.to_pandas())


def test_empty_text_id_names_no_stay(tmp_path):
    path = write(tmp_path / "data.csv", "stay_id,time,variable,value\n1,0,HR,80\n  ,1,HR,81\n")
    with pytest.raises(DataError, match="row 2: stay_id '  ' names no stay"):
        read_long(path)


@pytest.mark.parametrize("spelling", ["1.0", " 1 ", "+1", "1.", "1.000"])
def test_text_that_spells_an_integer_is_that_integer(tmp_path, spelling):
    """Half of stay 1's rows spelled another way are still stay 1: one patient is never two stays."""
    path = write(tmp_path / "data.csv", f"stay_id,time,variable,value\n1,0,HR,80\n{spelling},1,HR,81\n2,0,HR,90\n")
    raw = read_long(path)
    assert raw.long.schema["stay_id"] == pl.Int64 and raw.stays.to_list() == [1, 2]
    assert raw.long["stay_id"].to_list() == [1, 1, 2]


def test_csv_and_parquet_read_a_whole_number_as_the_same_integer(tmp_path):
    pl.DataFrame({"stay_id": [12.0], "time": [0.0], "variable": ["HR"], "value": [80.0]}).write_parquet(
        tmp_path / "a.parquet")
    csv = write(tmp_path / "b.csv", "stay_id,time,variable,value\n12.0,0,HR,80\n")
    assert read_long(tmp_path / "a.parquet").stays.to_list() == read_long(csv).stays.to_list() == [12]
    with pytest.raises(DataError, match=re.escape("stay 12 appears in both a.parquet and b.csv")):
        load([tmp_path / "a.parquet", csv])


@pytest.mark.parametrize("bad", ["2.5", ".5", "nan", "NaN", "inf", "-Infinity"])
def test_a_fractional_or_non_finite_text_id_names_the_file_and_row(tmp_path, bad):
    path = write(tmp_path / "data.csv", f"stay_id,time,variable,value\n1,0,HR,80\nP-17,1,HR,81\n{bad},2,HR,82\n")
    with pytest.raises(DataError, match=re.escape(f"data file {path}, row 3: stay_id '{bad}' names no stay")):
        read_long(path)


def test_mixed_ids_are_text_and_a_number_is_one_stay_whatever_its_spelling(tmp_path):
    """With one text id every id is text; ``1`` and ``1.0`` are still the one stay "1" (an integral number's
    text is its digits), and a leading zero makes text: ``007`` is not ``7``."""
    path = write(tmp_path / "data.csv", "stay_id,time,variable,value\n1.0,0,HR,80\n1,1,HR,81\nP-17,0,HR,82\n"
                                      "007,0,HR,83\n7,0,HR,84\n 7.0 ,1,HR,85\n")
    raw = read_long(path)
    assert raw.long.schema["stay_id"] == pl.String
    assert raw.stays.to_list() == ["007", "1", "7", "P-17"]
    assert raw.long["stay_id"].to_list() == ["1", "1", "P-17", "007", "7", "7"]


def test_a_required_column_twice_is_refused(tmp_path):
    for header, twice in [("stay_id,time,variable,value,value", "value"), ("stay_id,time,variable,value,stay_id", "stay_id")]:
        path = write(tmp_path / f"{twice}.csv", f"{header}\n1,0,HR,80,2\n")
        with pytest.raises(DataError, match=re.escape(f"data file {path} has the column '{twice}' 2 times")):
            read_long(path)
    labels = write(tmp_path / "labels.csv", "stay_id,label,label\n1,0,1\n")
    with pytest.raises(DataError, match=re.escape(f"labels file {labels} has the column 'label' 2 times")):
        read_labels(labels)
    import pyarrow as pa
    import pyarrow.parquet as pq

    parquet = tmp_path / "data.parquet"
    pq.write_table(pa.table([[1], [0.0], ["HR"], [80.0], [81.0]], names=[*LONG_COLUMNS, "value"]), parquet)
    with pytest.raises(DataError, match=re.escape(f"cannot read data file {parquet}: column with name 'value' has "
                                                  f"more than one occurrence")):
        read_long(parquet)


def test_a_file_that_is_not_utf8_names_the_line_and_byte(tmp_path):
    path = tmp_path / "data.csv"
    path.write_bytes("stay_id,time,variable,value\n1,0,HR,80\n2,0,Temp\u00e9,37\n".encode("latin-1"))
    # line 3 starts at byte 38; "2,0,Temp" is 8 bytes, then the Latin-1 e-acute
    with pytest.raises(DataError, match=re.escape(f"cannot read data file {path}: invalid utf-8 sequence at line 3 "
                                                  f"(byte 46: 0xe9); the file must be UTF-8")):
        read_long(path)


def test_xlsx_rejected(tmp_path):
    path = tmp_path / "data.xlsx"
    path.write_bytes(b"PK\x03\x04 not really a workbook")
    with pytest.raises(DataError, match=re.escape(f"data file {path} must be .csv or .parquet (got '.xlsx')")):
        read_long(path)
    with pytest.raises(DataError, match=re.escape("must be .csv or .parquet (got '.xlsx')")):
        load(path)


# -- labels ----------------------------------------------------------------------------------------------
def test_labels_file_read(tmp_path):
    path = write(tmp_path / "labels.csv", "stay_id,label\n5,1\n3,0\n")
    out = read_labels(path)
    assert out.rows() == [(5, 1, None), (3, 0, None)]
    assert out.schema == {"stay_id": pl.Int64, "label": pl.Int8, "saps_i": pl.Float64}


@pytest.mark.parametrize("label", ["2", "0.5", "true", "yes", "nan", ""])
def test_a_label_other_than_0_or_1_names_the_row(tmp_path, label):
    path = write(tmp_path / "labels.csv", f"stay_id,label\n1,0\n2,{label}\n3,1\n4,{label}\n")
    expected = (f"labels in {path}, row 2: stay_id 2, label {label or None!r}: every row needs a stay_id and a "
                f"label of 0 or 1 (1.0 counts as 1); 2 row(s) do not")
    with pytest.raises(DataError, match=re.escape(expected)):
        read_labels(path)


def test_labels_written_as_floats_match_integer_stays(tmp_path):
    """pandas writes a column with a missing value as floats: ``1.0,1.0`` is stay 1, died."""
    labels = write(tmp_path / "labels.csv", "stay_id,label\n1.0,1.0\n2.0, 0 \n")
    assert read_labels(labels).rows() == [(1, 1, None), (2, 0, None)]
    data = write(tmp_path / "data.csv", "stay_id,time,variable,value\n1,0,HR,80\n2,0,HR,90\nP-17,0,HR,85\n")
    raw = load(data, labels=labels)  # text ids in the data: the labels' integers are their digits
    assert raw.stays.to_list() == ["1", "2", "P-17"]
    assert raw.outcomes.select("stay_id", "label").rows() == [("1", 1), ("2", 0)]


def test_two_spellings_of_one_stay_in_labels_are_one_stay(tmp_path):
    path = write(tmp_path / "labels.csv", "stay_id,label\n1,0\n1.0,1\n")
    with pytest.raises(DataError, match=re.escape(f"labels in {path}: stay_id 1 has more than one label")):
        read_labels(path)


def test_outcomes_record_ids_written_as_floats(tmp_path):
    path = write(tmp_path / "Outcomes-f.txt", "RecordID,SAPS-I,In-hospital_death\n132592.0,10,1.0\n132593,-1,0\n")
    assert read_outcomes(path).rows() == [(132592, 1, 10.0), (132593, 0, None)]
    bad = write(tmp_path / "Outcomes-g.txt", "RecordID,In-hospital_death\n132592,1\n132593,true\n")
    expected = (f"labels in {bad}, row 2: stay_id 132593, In-hospital_death 'true': every row needs a stay_id "
                f"and a label of 0 or 1")
    with pytest.raises(DataError, match=re.escape(expected)):
        read_outcomes(bad)
    text = write(tmp_path / "Outcomes-h.txt", "RecordID,In-hospital_death\n132592,1\nP-1,0\n")
    with pytest.raises(DataError, match=re.escape(f"outcomes file {text}, row 2: RecordID 'P-1' is not a PhysioNet "
                                                  f"RecordID")):
        read_outcomes(text)


def test_labels_duplicated_stay_rejected(tmp_path):
    path = write(tmp_path / "labels.csv", "stay_id,label\n1,0\n3,1\n3,1\n")
    with pytest.raises(DataError, match=re.escape(f"labels in {path}: stay_id 3 has more than one label")):
        read_labels(path)


def test_labels_missing_column(tmp_path):
    path = write(tmp_path / "labels.csv", "stay_id,died\n1,0\n")
    with pytest.raises(DataError, match=re.escape("lacks column(s) ['label']")):
        read_labels(path)


# -- load ---------------------------------------------------------------------------------------------------
def test_load_same_stay_in_two_paths(physionet_set, tmp_path):
    folder = physionet_set(STAYS)
    dup = write(tmp_path / "dup.csv", "stay_id,time,variable,value\n9,0.5,HR,80\n140002,1.0,HR,90\n")
    expected = "stay 140002 appears in both set-x and dup.csv; stay ids must be unique across --data paths"
    with pytest.raises(DataError, match=re.escape(expected)):
        load([folder, dup])


def test_load_nonexistent_path(physionet_set, tmp_path):
    folder = physionet_set(STAYS)
    missing = tmp_path / "nowhere" / "set-z"
    with pytest.raises(DataError, match=re.escape(f"data path {missing} does not exist")):
        load([folder, missing])
    with pytest.raises(DataError, match=re.escape(f"data path {missing} does not exist")):
        load(str(missing))


def test_load_physionet_and_parquet_stay_numeric(physionet_set, tmp_path):
    folder = physionet_set(STAYS, outcomes=OUTCOMES)
    parquet = tmp_path / "extra.parquet"
    pl.DataFrame({"stay_id": [9], "time": [0.5], "variable": ["HR"], "value": [80.0]}).write_parquet(parquet)
    raw = load([folder, parquet])
    assert raw.stays.to_list() == [9, 140001, 140002]
    assert raw.sources == ["set-x", "extra.parquet"]
    assert raw.long.schema["time"] == pl.Float64 and raw.long.schema["value"] == pl.Float64
    assert raw.long.rows() == [*EXPECTED_ROWS, (9, 0.5, "HR", 80.0)]
    assert sorted(raw.outcomes.rows()) == [(140001, 1, None), (140002, 0, 14.0)]


def test_load_physionet_and_csv_mix_as_text_and_validate_alike(physionet_set, tmp_path):
    folder = physionet_set(STAYS, outcomes=OUTCOMES)
    csv = write(tmp_path / "extra.csv", "stay_id,time,variable,value\n9,00:30,HR,80\n9,1.25,HR,81\n")
    raw = load([folder, csv])
    assert raw.long.schema["time"] == pl.String and raw.long.schema["value"] == pl.String
    assert raw.long.height == 16  # 14 PhysioNet rows + 2 CSV rows
    assert raw.long.filter(pl.col("stay_id") == 9).rows() == [(9, "00:30", "HR", "80"), (9, "1.25", "HR", "81")]
    cat = Catalogue.default()
    mixed, kept, _ = validate(raw, cat)
    alone, _, _ = validate(read_physionet(folder), cat)
    assert kept.to_list() == [9, 140001, 140002]
    # the PhysioNet numbers survive the trip through text exactly (rows compared as sets: ties in
    # (stay_id, time) have no defined order)
    assert sorted(mixed.filter(pl.col("stay_id") != 9).rows()) == sorted(alone.rows())
    assert len(alone) == 14
    assert mixed.filter(pl.col("stay_id") == 9).rows() == [(9, 0.5, "HR", 80.0), (9, 1.25, "HR", 81.0)]


def test_load_labels_override_outcomes(physionet_set, tmp_path):
    folder = physionet_set(STAYS, outcomes=OUTCOMES)  # 140001 died per Outcomes-x.txt
    labels = write(tmp_path / "labels.csv", "stay_id,label\n140001,0\n140002,1\n")
    raw = load(folder, labels=labels)
    assert sorted(raw.outcomes.rows()) == [(140001, 0, None), (140002, 1, None)]


def test_load_outcomes_with_two_paths_rejected(tmp_path):
    a = write_physionet_set(tmp_path / "a", STAYS, name="a")
    b = write_physionet_set(tmp_path / "b", {150001: []}, name="b")
    with pytest.raises(DataError, match=re.escape("--outcomes applies to a single --data path")):
        load([a, b], outcomes=a.parent / "Outcomes-a.txt")


def test_load_no_paths():
    with pytest.raises(DataError, match=re.escape("no data path given")):
        load([])
