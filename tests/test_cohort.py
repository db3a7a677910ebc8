"""Tests for clinical_lstm.features.cohort: stays gridded chunk by chunk onto disk give the inputs, statistics and digest
of the whole table in memory whatever the chunking and row order; batches read from disk train the same
networks as batches from memory; ``train --data <prepared folder>`` is ``train`` on the raw data; every stay is
accounted for; a stale or foreign prepared folder is refused with a reason."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import polars as pl
import pytest
import torch
from helpers import random_long

from clinical_lstm.config import Config, TrainConfig
from clinical_lstm.data.catalogue import Catalogue
from clinical_lstm.data.load import load
from clinical_lstm.data.sources import DataError
from clinical_lstm.data.validate import validate
from clinical_lstm.features.cohort import Cohort, StayFile
from clinical_lstm.features.impute import GridTransformer
from clinical_lstm.features.parts import Parts, grid_parts, is_cohort
from clinical_lstm.model.network import ModelConfig
from clinical_lstm.model.training import cross_fit
from clinical_lstm.workflow import prepare, train

CAT = Catalogue.default()
N = 36


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The same stays twice: a Parquet file sorted by stay and a CSV with its rows shuffled (no stay's rows
    contiguous), and labels for all but the last three stays."""
    root = tmp_path_factory.mktemp("cohort")
    long = random_long(N, seed=5)
    long.write_parquet(root / "sorted.parquet")
    long.sample(fraction=1.0, shuffle=True, seed=1).write_csv(root / "shuffled.csv")
    rng = np.random.default_rng(0)
    y = rng.permutation(np.tile([0, 1], N // 2))
    pl.DataFrame({"stay_id": np.arange(1, N - 2), "label": y[:N - 3]}).write_csv(root / "labels.csv")
    return root, long


def _cohort(parts: Parts) -> Cohort:
    return Cohort.build(parts, GridTransformer(CAT), parts.folder)


def test_chunks_and_row_order_change_nothing(data, tmp_path):
    root, long = data
    a = grid_parts(root / "sorted.parquet", tmp_path / "a", CAT, 48, 1, root / "labels.csv", require_labels=True,
                   chunk_stays=4)
    b = grid_parts(root / "shuffled.csv", tmp_path / "b", CAT, 48, 1, root / "labels.csv", require_labels=True,
                   chunk_stays=1000)
    assert len(a.files) == 9 and len(b.files) == 1
    ca, cb = _cohort(a.labelled()), _cohort(b.labelled())
    assert a.digest == b.digest
    assert {**a.report.to_dict(), "sources": None} == {**b.report.to_dict(), "sources": None}
    assert a.report.n_stays_read == N and sorted(a.report.rejects["reason"].to_list()) == ["no_label"] * 3
    np.testing.assert_array_equal(ca.ids, np.arange(1, N - 2))
    np.testing.assert_array_equal(ca.ids, cb.ids)

    # the reference: the whole validated table in memory, fitted and transformed in one go
    clean, kept, _ = validate(load(root / "sorted.parquet", root / "labels.csv"), CAT, 48, require_labels=True)
    ref = GridTransformer(CAT).fit(clean, kept.to_numpy())
    expect = ref.transform(clean, kept.to_numpy())
    for c in (ca, cb):  # to the last bit: training would magnify any difference into another model
        for name in ("center_", "scale_", "median_", "static_center_", "static_scale_", "static_mean_"):
            np.testing.assert_array_equal(getattr(c.transformer, name), getattr(ref, name))
        got = c.tensors()
        for name in ("x", "mask", "delta", "lengths", "statics", "summary"):
            np.testing.assert_array_equal(getattr(got, name), getattr(expect, name))
    # any subset, in any order, reads the records of those stays
    pick = np.array([7, 0, 31, 8, 9])
    np.testing.assert_array_equal(ca.tensors(pick).x, ca.tensors().x[pick])
    np.testing.assert_array_equal(ca.tensors(pick).stay_ids, ca.ids[pick])


def test_disk_batches_train_the_same_networks(data, tmp_path):
    root, _ = data
    cohort = _cohort(grid_parts(root / "sorted.parquet", tmp_path, CAT, 48, 1, root / "labels.csv",
                                require_labels=True, chunk_stays=5))
    cfg = TrainConfig(folds=2, epochs=2, patience=2, batch_size=8, seed=0, device="cpu")
    model = ModelConfig(hidden_size=8, attention=True)
    assert isinstance(cohort.source(torch.device("cpu"), 0), StayFile)
    assert isinstance(cohort.source(torch.device("cpu"), 1.0), dict)
    from_disk = cross_fit(cohort, cohort.y, model, replace(cfg, in_memory_gb=0), progress=False)
    in_memory = cross_fit(cohort, cohort.y, model, cfg, progress=False)
    np.testing.assert_array_equal(from_disk.oof_logits, in_memory.oof_logits)
    for a, b in zip(from_disk.networks, in_memory.networks, strict=True):
        for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
            assert torch.equal(va, vb), k


TINY = {"train": {"folds": 2, "epochs": 1, "patience": 1, "batch_size": 16, "device": "cpu"},
        "model": {"hidden_size": 8}, "evaluation": {"n_boot": 20, "explain_stays": 4}}


def test_train_reads_what_prepare_wrote(data, tmp_path):
    root, _ = data
    cfg = Config.from_dict(TINY)
    prepared = prepare(root / "shuffled.csv", tmp_path / "prepared", root / "labels.csv", config=cfg)
    assert is_cohort(tmp_path / "prepared") and prepared.n_stays == N
    grid = pl.read_parquet(tmp_path / "prepared" / "grid.parquet")
    assert grid["stay_id"].n_unique() == N and set(pl.read_parquet(tmp_path / "prepared" / "labels.parquet")
                                                   ["stay_id"]) == set(range(1, N - 2))
    from_raw = train(root / "sorted.parquet", tmp_path / "raw", root / "labels.csv", config=cfg, progress=False,
                     log=lambda *_: None)
    from_prepared = train(tmp_path / "prepared", tmp_path / "run", config=cfg, progress=False, log=lambda *_: None)
    a, b = (pl.read_parquet(r.report_dir / "out_of_fold.parquet") for r in (from_raw, from_prepared))
    assert a.equals(b)
    # the three stays prepared without a label are training rejects, not silently missing
    rep = from_prepared.report
    assert rep.n_stays_read == N and rep.n_stays_kept == N - 3
    assert rep.rejects.filter(pl.col("reason") == "no_label")["stay_id"].to_list() == [N - 2, N - 1, N]
    assert (rep.n_rows_read, rep.n_rows_kept) == (from_raw.report.n_rows_read, from_raw.report.n_rows_kept)
    # the same stays, digest, stay hashes and counts; the inputs named by kind (prepare read shuffled.csv), never
    # by file name
    assert from_prepared.model.metadata["training_data"] == from_raw.model.metadata["training_data"] | {
        "sources": ["long-format CSV"]}
    assert not list((tmp_path / "run").glob(".work.*")), "the work folder is removed"


def test_a_prepared_folder_is_checked(data, tmp_path):
    root, _ = data
    cfg = Config.from_dict(TINY)
    prepare(root / "sorted.parquet", tmp_path / "p24", config=Config.from_dict({"data": {"window_hours": 24}}))
    with pytest.raises(DataError, match=r"prepared with a 24 h window .* asks for 48 h"):
        train(tmp_path / "p24", tmp_path / "run", root / "labels.csv", config=cfg, progress=False)
    with pytest.raises(DataError, match="no outcome labels found for the training data"):
        train(tmp_path / "p24", tmp_path / "run", config=Config.from_dict({**TINY, "data": {"window_hours": 24}}),
              progress=False)
    next((tmp_path / "p24" / "parts").glob("part-*.npz")).unlink()
    with pytest.raises(DataError, match=r"part parts/part-00000.npz is missing"):
        Parts.open(tmp_path / "p24", CAT)


def _stays(first: int, n: int) -> dict:
    """``n`` PhysioNet stays with a few heart rates each (ids from ``first``)."""
    return {rid: [(f"{h:02d}:{m:02d}", "HR", 60 + (rid * 7 + h) % 50) for h in range(0, 40, 6) for m in (0, 30)]
            for rid in range(first, first + n)}


def test_physionet_sets_are_read_once_in_chunks(physionet_set, tmp_path):
    """A folder and an archive read in one pass each: chunks of 3 stays give the parts, ids, report and digest
    of one chunk per set, numbered in order across the sets."""
    sets = [physionet_set(_stays(100, 7), name="a"), physionet_set(_stays(200, 7), name="b", archive=True)]
    small = grid_parts(sets, tmp_path / "small", CAT, 48, 1, chunk_stays=3)
    whole = grid_parts(sets, tmp_path / "whole", CAT, 48, 1, chunk_stays=1000)
    assert small.files == [f"parts/part-{i:05d}.npz" for i in range(6)] and len(whole.files) == 2
    assert [len(a) for a in small.part_ids()] == [3, 3, 1, 3, 3, 1]
    np.testing.assert_array_equal(np.concatenate(small.part_ids()), [*range(100, 107), *range(200, 207)])
    assert small.digest == whole.digest and small.report.to_dict() == whole.report.to_dict()
    assert small.report.n_stays_read == 14 and not list((tmp_path / "small").glob(".parts-partial"))


def test_a_failed_prepare_keeps_the_cohort_that_was_there(physionet_set, tmp_path):
    """The damage at the end of the second archive is found after the first set's chunks were gridded: the
    error names it, and the folder still holds the earlier cohort, whole (nothing half-replaced, no staging left)."""
    good = physionet_set(_stays(100, 5), name="a")
    out = tmp_path / "prepared"
    prepare(good, out)
    before = Parts.open(out, CAT)
    files_before = {f: f.read_bytes() for f in (out / "grid.parquet", out / "statics.parquet")}
    damaged = physionet_set(_stays(300, 5), name="c", archive=True)
    damaged.write_bytes(damaged.read_bytes()[:-12])  # the gzip trailer cut off: its checksum cannot be verified
    with pytest.raises(DataError, match=r"set-c\.tar\.gz: the archive is damaged after \d+ stay files"):
        prepare([good, damaged], out)
    twice = physionet_set(_stays(100, 2), name="d", archive=True)  # stays 100 and 101 again
    with pytest.raises(DataError, match="stay 100 appears in both"):
        prepare([good, twice], out)
    after = Parts.open(out, CAT)
    assert after.files == before.files and after.digest == before.digest
    np.testing.assert_array_equal(np.concatenate(after.part_ids()), range(100, 105))
    assert not (out / ".parts-partial").exists()
    assert {f: f.read_bytes() for f in files_before} == files_before  # the grid files written as the parts came
    assert not list(out.glob(".*.tmp"))  # were closed and removed


def test_a_cohort_is_scored_block_by_block_as_in_one_call(data, tmp_path):
    """Evaluation and ``train --test`` score a cohort a block of stays at a time (bounded memory): the logits
    equal those of one call on every stay's tensors, in stay-id order."""
    from helpers import tiny_model

    root, _ = data
    model = tiny_model(n_networks=2, head=True)
    parts = grid_parts(root / "sorted.parquet", tmp_path / "p", CAT, 48, 1)
    cohort = Cohort.build(parts, model.transformer, tmp_path / "p", require_labels=False)
    whole = model.logits(cohort.tensors())
    assert len(whole) == N and np.unique(whole).size > 1
    np.testing.assert_allclose(np.concatenate([model.logits(t) for t in cohort.blocks(8)]), whole, rtol=1e-6,
                               atol=1e-6)  # other batch sizes may sum in another order
    np.testing.assert_array_equal(np.concatenate([t.stay_ids for t in cohort.blocks(8)]), cohort.ids)
    np.testing.assert_array_equal(cohort.apply(model.logits), whole)


def test_usable_cpus_where_the_os_has_no_affinity(monkeypatch):
    """Linux reads the affinity mask (what the process may use); macOS and Windows have none: the CPU count."""
    import os

    from clinical_lstm.config import usable_cpus

    if hasattr(os, "sched_getaffinity"):
        assert usable_cpus() == len(os.sched_getaffinity(0))
        monkeypatch.delattr(os, "sched_getaffinity")
    monkeypatch.setattr(os, "cpu_count", lambda: 7)
    assert usable_cpus() == 7
    monkeypatch.setattr(os, "cpu_count", lambda: None)  # "undetermined"
    assert usable_cpus() == 1


def test_labels_that_name_no_stay_are_refused(data, physionet_set, tmp_path):
    """Labels of which none names a stay read (other data, or ids written another way) are refused with both
    counts and an id of each, whether the data are raw long files, a PhysioNet set or a prepared folder — not
    every stay rejected ``no_label`` and a training error about 0 deaths and 0 survivors."""
    root, _ = data
    (tmp_path / "text.csv").write_text("stay_id,label\nX1,1\nX2,0\n")
    (tmp_path / "other.csv").write_text("stay_id,label\n101,1\n102,0\n103,1\n")
    with pytest.raises(DataError, match=rf"^no label matches a stay: {N} stays read, 2 labels given \(labels file "
                                        r".*text\.csv\), none with a stay in the data \(e\.g\. stay_id '1' in the "
                                        r"data, 'X1' in the labels\)"):
        grid_parts(root / "sorted.parquet", tmp_path / "a", CAT, 48, 1, tmp_path / "text.csv", require_labels=True)
    with pytest.raises(DataError, match=rf"{N} stays read, 3 labels given .* stay_id 1 in the data, 101 in the labels"):
        grid_parts(root / "sorted.parquet", tmp_path / "b", CAT, 48, 1, tmp_path / "other.csv", require_labels=True)
    with pytest.raises(DataError, match=rf"{N} stays read, 3 labels given"):  # prepare does not keep them either
        prepare(root / "sorted.parquet", tmp_path / "c", tmp_path / "other.csv")
    assert not is_cohort(tmp_path / "c") and not (tmp_path / "c" / ".parts-partial").exists()
    prepare(root / "sorted.parquet", tmp_path / "p")
    with pytest.raises(DataError, match=rf"{N} stays read, 2 labels given .* stay_id 1 in the data, 'X1' in the labels"):
        train(tmp_path / "p", tmp_path / "run", tmp_path / "text.csv", config=Config.from_dict(TINY), progress=False)
    s = physionet_set(_stays(100, 3), name="a")  # ids known only once the set is read
    (tmp_path / "far.csv").write_text("stay_id,label\n900,1\n")
    with pytest.raises(DataError, match=r"3 stays read, 1 labels given .* stay_id 100 in the data, 900 in the labels"):
        grid_parts(s, tmp_path / "d", CAT, 48, 1, tmp_path / "far.csv", require_labels=True)
    assert not (tmp_path / "d" / ".parts-partial").exists()


def test_a_cohort_without_a_kept_stay_keeps_the_id_kind(tmp_path):
    """Text ids whose labels match, every stay rejected by validation (no time series): the cohort is empty and
    its ids are still text, so joining the (text) labels works and training can say what is wrong."""
    pl.DataFrame({"stay_id": ["A", "B"], "time": [0.0, 0.0], "variable": ["Age", "Age"],
                  "value": [50.0, 60.0]}).write_csv(tmp_path / "statics_only.csv")
    (tmp_path / "labels.csv").write_text("stay_id,label\nA,1\nB,0\n")
    parts = grid_parts(tmp_path / "statics_only.csv", tmp_path / "p", CAT, 48, 1, tmp_path / "labels.csv",
                       require_labels=True).labelled()
    assert parts.report.rejects.rows() == [("A", "no_time_series"), ("B", "no_time_series")]
    cohort = _cohort(parts)
    assert len(cohort) == 0 and cohort.ids.dtype.kind == "U" and cohort.y.dtype == np.int64 and not len(cohort.y)


def test_labels_of_stays_missing_from_the_data_are_counted(data, tmp_path):
    """Labels for stays the data lacks (a partial extract) are said in the quality report and its summary: on
    raw data and on a prepared folder given --labels; labels that all match count 0."""
    root, _ = data
    labels = pl.read_csv(root / "labels.csv")
    extra = pl.concat([labels, pl.DataFrame({"stay_id": [9001, 9002, 9003], "label": [0, 1, 0]})])
    extra.write_csv(tmp_path / "extra.csv")
    res = prepare(root / "shuffled.csv", tmp_path / "p", tmp_path / "extra.csv")
    assert res.report.labels_without_stay == 3 and "3 label(s) name a stay that is not in the data" in str(res.report)
    assert res.report.to_dict(include_stay_ids=False)["labels_without_stay"] == 3
    assert Parts.open(tmp_path / "p", CAT).report.labels_without_stay == 3  # kept with the prepared folder
    assert Parts.open(tmp_path / "p", CAT, tmp_path / "extra.csv").report.labels_without_stay == 3
    assert prepare(root / "shuffled.csv", tmp_path / "q", root / "labels.csv").report.labels_without_stay == 0


def test_a_second_prepare_never_keeps_the_first_ones_labels(data, tmp_path):
    """prepare with labels, then another cohort without labels into the same folder: the first cohort's
    labels.parquet would have been read as the second's (a silent wrong result)."""
    root, long = data
    out = tmp_path / "p"
    prepare(root / "shuffled.csv", out, root / "labels.csv")
    assert Parts.open(out, CAT).outcomes is not None
    other = long.with_columns(pl.col("value") * 1.01)
    other.write_parquet(tmp_path / "other.parquet")
    prepare(tmp_path / "other.parquet", out)
    assert not (out / "labels.parquet").exists() and Parts.open(out, CAT).outcomes is None
    with pytest.raises(DataError, match="no outcome labels"):
        train(out, tmp_path / "run", config=Config.from_dict(TINY), progress=False, log=lambda *_: None)


def test_a_prepare_that_did_not_finish_is_named_as_such(data, tmp_path):
    root, _ = data
    out = tmp_path / "p"
    prepare(root / "shuffled.csv", out, root / "labels.csv")
    (out / "cohort.json").unlink()  # written last: a prepare killed before the end has none
    with pytest.raises(DataError, match="no cohort.json: a clinical-lstm prepare that did not finish"):
        train(out, tmp_path / "run", config=Config.from_dict(TINY), progress=False, log=lambda *_: None)
    assert not is_cohort(tmp_path / "nothing-here") and not (tmp_path / "run").exists()
