"""Tests for clinical_lstm.data.catalogue: the default catalogue against the PhysioNet 2012 variable list (as
the data's README states it), CSV validation messages, round-tripping and the digest."""

from __future__ import annotations

import re

import pytest

from clinical_lstm.data.catalogue import Catalogue, Variable, resolve

# From the PhysioNet 2012 README: the 00:00 descriptors (RecordID is the id, not a variable) ...
DESCRIPTORS = ["Age", "Gender", "Height", "ICUType", "Weight"]
# ... and the time series (Weight is both).
TIME_SERIES = ["HR", "MAP", "SysABP", "DiasABP", "NISysABP", "NIDiasABP", "NIMAP", "Temp", "RespRate", "SaO2",
               "GCS", "Urine", "Weight", "FiO2", "MechVent", "pH", "PaCO2", "PaO2", "HCT", "K", "Na", "Mg",
               "HCO3", "Glucose", "Platelets", "WBC", "BUN", "Creatinine", "Lactate", "Albumin", "ALP", "ALT",
               "AST", "Bilirubin", "Cholesterol", "TroponinI", "TroponinT"]

HEADER = "name,unit,lower,upper,aggregation,kind,static,description\n"
GOOD = HEADER + "HR,bpm,1,300,mean,vital,false,Heart rate\nAge,years,0,120,last,static,true,Age\n"


def test_default_covers_all_41_physionet_variables():
    cat = Catalogue.default()
    expected = set(DESCRIPTORS) | set(TIME_SERIES)
    assert len(expected) == 41
    assert len(cat) == 41
    assert set(cat.names) == expected
    assert "RecordID" not in cat


def test_default_series_and_statics():
    cat = Catalogue.default()
    assert set(cat.series) == set(TIME_SERIES)  # 37 series, Weight included
    assert len(cat.series) == 37
    assert set(cat.statics) == set(DESCRIPTORS)  # admission Weight is also a static feature
    assert cat["Weight"].is_series and cat["Weight"].static
    assert not cat["Age"].is_series


def test_default_urine_is_summed():
    assert Catalogue.default()["Urine"].aggregation == "sum"


def test_default_ranges_are_plausible():
    cat = Catalogue.default()
    assert cat["pH"].lower <= 7.35 <= cat["pH"].upper
    assert not cat["pH"].lower <= 735 <= cat["pH"].upper
    assert cat["Height"].lower > -1  # so -1 on Height is the not-recorded sentinel
    assert all(v.lower <= v.upper for v in cat.variables)


def test_from_csv_text_reads_a_small_catalogue():
    cat = Catalogue.from_csv_text(GOOD)
    assert cat.names == ["HR", "Age"]
    assert cat["HR"] == Variable("HR", "bpm", 1.0, 300.0, "mean", "vital", False, "Heart rate")
    assert cat.series == ["HR"] and cat.statics == ["Age"]
    assert repr(cat) == "Catalogue(1 series, 1 statics)"


def test_bad_aggregation_names_the_line():
    text = GOOD + "Urine,mL,0,5000,median,vital,false,\n"
    expected = "my.csv line 4 ('Urine'): aggregation must be one of ('mean', 'last', 'sum', 'max', 'min'), got 'median'"
    with pytest.raises(ValueError, match=re.escape(expected)):
        Catalogue.from_csv_text(text, source="my.csv")


def test_lower_above_upper_names_the_line():
    text = HEADER + "HR,bpm,300,1,mean,vital,false,\n"
    with pytest.raises(ValueError, match=re.escape("catalogue line 2 ('HR'): lower 300.0 is greater than upper 1.0")):
        Catalogue.from_csv_text(text)


def test_non_numeric_bound_names_the_line():
    text = GOOD + "K,mEq/L,one,15,last,lab,false,\n"
    with pytest.raises(ValueError, match=re.escape("catalogue line 4 ('K'): lower/upper must be numbers, got 'one'/'15'")):
        Catalogue.from_csv_text(text)


def test_duplicate_name_named():
    text = GOOD + "HR,bpm,1,250,mean,vital,false,again\n"
    with pytest.raises(ValueError, match=re.escape("catalogue lists ['HR'] more than once")):
        Catalogue.from_csv_text(text)


def test_bad_kind_and_static_kind_without_static():
    with pytest.raises(ValueError, match=re.escape("catalogue line 2 ('X'): kind must be one of")):
        Catalogue.from_csv_text(HEADER + "X,u,0,1,last,drug,false,\n")
    with pytest.raises(ValueError, match=re.escape("catalogue line 2 ('X'): kind 'static' requires static=true")):
        Catalogue.from_csv_text(HEADER + "X,u,0,1,last,static,false,\n")


def test_missing_column_named():
    text = "name,unit,lower,upper,kind,static\nHR,bpm,1,300,vital,false\n"
    with pytest.raises(ValueError, match=re.escape("catalogue lacks column(s) ['aggregation']")):
        Catalogue.from_csv_text(text)


def test_line_number_counts_blank_lines():
    text = HEADER + "HR,bpm,1,300,mean,vital,false,\n\nK,mEq/L,1,15,median,lab,false,\n"
    with pytest.raises(ValueError, match=re.escape("catalogue line 4 ('K')")):  # header 1, HR 2, blank 3
        Catalogue.from_csv_text(text)


def test_from_csv_missing_file(tmp_path):
    missing = tmp_path / "cat.csv"
    with pytest.raises(FileNotFoundError, match=re.escape(f"catalogue file {missing} does not exist")):
        Catalogue.from_csv(missing)


def test_round_trip_default():
    cat = Catalogue.default()
    again = Catalogue.from_csv_text(cat.to_csv_text())
    assert again == cat
    assert again.names == cat.names  # channel order preserved
    assert again.digest() == cat.digest()


def test_round_trip_awkward_text():
    cat = Catalogue([Variable("Odd", 'mg "dry", per dL', 0.05, 1e6, "max", "lab", False, "a, b\nc"),
                     Variable("Age", "years", 0.0, 120.0, "last", "static", True, "")])
    again = Catalogue.from_csv_text(cat.to_csv_text())
    assert again == cat


def test_from_csv_file(tmp_path):
    path = tmp_path / "cat.csv"
    path.write_text(GOOD)
    assert Catalogue.from_csv(path) == Catalogue.from_csv_text(GOOD)
    assert resolve(path) == Catalogue.from_csv_text(GOOD)
    assert resolve(str(path)).names == ["HR", "Age"]


def test_resolve():
    cat = Catalogue.from_csv_text(GOOD)
    assert resolve(cat) is cat
    assert resolve(None) == Catalogue.default()


def test_digest_changes_with_a_range():
    base = Catalogue.from_csv_text(GOOD)
    same = Catalogue.from_csv_text(GOOD)
    wider = Catalogue.from_csv_text(GOOD.replace("HR,bpm,1,300", "HR,bpm,1,301"))
    assert re.fullmatch(r"[0-9a-f]{64}", base.digest())
    assert base.digest() == same.digest()
    assert wider.digest() != base.digest()
    assert wider != base


# -- values that used to pass silently (audit F11) ---------------------------------------------------------
@pytest.mark.parametrize("bounds, got", [("nan,300", "nan/300.0"), ("1,inf", "1.0/inf"),
                                         ("-inf,300", "-inf/300.0"), ("NaN,NaN", "nan/nan")])
def test_non_finite_bound_names_the_line(bounds, got):
    text = GOOD + f"K,mEq/L,{bounds},last,lab,false,\n"
    expected = f"cat.csv line 4 ('K'): lower/upper must be finite numbers, got {got}"
    with pytest.raises(ValueError, match=re.escape(expected)):
        Catalogue.from_csv_text(text, source="cat.csv")


def test_empty_bound_is_not_no_bound():
    text = GOOD + "K,mEq/L,,15,last,lab,false,\n"
    expected = "line 4 ('K'): lower/upper must be numbers, got ''/'15'; an empty bound is not 'no bound'"
    with pytest.raises(ValueError, match=re.escape(expected)):
        Catalogue.from_csv_text(text)


@pytest.mark.parametrize("name", ["", "   "])
def test_empty_name_names_the_line(name):
    text = GOOD + f"{name},mEq/L,1,15,last,lab,false,\n"
    with pytest.raises(ValueError, match=re.escape("catalogue line 4 (''): name must be non-empty text")):
        Catalogue.from_csv_text(text)


@pytest.mark.parametrize("spelling", ["maybe", "yes", "1", "", "t"])
def test_static_takes_only_true_or_false(spelling):
    text = GOOD + f"K,mEq/L,1,15,last,lab,{spelling},\n"
    expected = f"catalogue line 4 ('K'): static must be true or false, got {spelling!r}"
    with pytest.raises(ValueError, match=re.escape(expected)):
        Catalogue.from_csv_text(text)


def test_static_spellings_any_case():
    text = HEADER + "HR,bpm,1,300,mean,vital,FALSE,\nWeight,kg,20,300,mean,vital, True ,\n"
    assert Catalogue.from_csv_text(text).statics == ["Weight"]


def test_header_only_is_no_variables_not_a_traceback(tmp_path):
    path = tmp_path / "cat.csv"
    path.write_text(HEADER)
    with pytest.raises(ValueError, match=re.escape(f"{path} lists no variables; a catalogue has a header")):
        Catalogue.from_csv(path)


def test_statics_only_is_refused_up_front():
    text = HEADER + "Age,years,0,120,last,static,true,\nGender,category,0,1,last,static,true,\n"
    expected = "my.csv lists no time-series variable (kind 'vital' or 'lab'), only statics ['Age', 'Gender']"
    with pytest.raises(ValueError, match=re.escape(expected)):
        Catalogue.from_csv_text(text, source="my.csv")


def test_python_construction_is_checked_the_same_way():
    with pytest.raises(ValueError, match=re.escape("lower/upper must be finite numbers, got nan/1.0")):
        Variable("HR", "bpm", float("nan"), 1.0, "mean", "vital", False)
    with pytest.raises(ValueError, match=re.escape("aggregation must be one of")):
        Variable("HR", "bpm", 0.0, 1.0, "median", "vital", False)
    with pytest.raises(ValueError, match=re.escape("catalogue lists no variables")):
        Catalogue([])
    with pytest.raises(ValueError, match=re.escape("catalogue lists no time-series variable")):
        Catalogue([Variable("Age", "years", 0.0, 120.0, "last", "static", True)])


def test_ragged_lines_name_the_line():
    expected = "catalogue line 4 ('K'): 9 fields but the header has 8; quote a value"
    with pytest.raises(ValueError, match=re.escape(expected)):
        Catalogue.from_csv_text(GOOD + "K,mEq/L,1,15,last,lab,false,Potassium, serum\n")
    expected = "catalogue line 4 ('K'): too few fields, ['kind', 'static'] missing"
    with pytest.raises(ValueError, match=re.escape(expected)):
        Catalogue.from_csv_text(GOOD + "K,mEq/L,1,15,last\n")


def test_byte_order_mark_of_a_spreadsheet_export(tmp_path):
    path = tmp_path / "cat.csv"
    path.write_text(GOOD, encoding="utf-8-sig")
    assert Catalogue.from_csv(path) == Catalogue.from_csv_text(GOOD)
