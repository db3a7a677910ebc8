"""Stays gridded on disk: training and evaluation in bounded memory, at any cohort size.

Two passes over chunks of whole stays (:mod:`clinical_lstm.data.chunks`, the reader batch scoring uses):

1. :func:`~clinical_lstm.features.parts.grid_parts` reads, validates (:func:`~clinical_lstm.data.validate.validate`) and grids
   (:func:`~clinical_lstm.data.grid.to_grid`) one chunk at a time and writes it as ``parts/part-NNNNN.npz``
   (values and observation times, (n, T, V) float32; raw statics; lengths; stay ids), with the merged quality
   report, the outcomes of the kept stays and ``cohort.json`` (written last: a folder without it is not a
   cohort). ``clinical-lstm prepare`` writes this folder; ``train --data <that folder>`` reads it. The parts go to
   ``.parts-partial/`` first and replace ``parts/`` only once every input has been read whole, so a job that
   fails (a damaged archive, a stay in two inputs) leaves the cohort that was there as it was.
2. :meth:`Cohort.build` fits the transformer on the labelled stays of the parts (one pass that keeps only the
   observed values, so even the medians are exact), then transforms each part and appends every stay's inputs,
   one (3, T, V) float32 record (x, mask, elapsed hours), to ``steps.f32``. The small per-stay arrays (lengths,
   statics, summaries, labels) stay in memory.

Training reads its batches from ``steps.f32`` — from memory when the records fit ``[train] in_memory_gb`` —
so its peak memory follows the chunk and batch sizes and the summaries, not the number of stays
(docs/benchmarks.md, "Scale"). Stays are kept in stay-id order whatever the input order.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from ..data.sources import DataError
from .impute import GridTransformer, Tensors, observed_values
from .parts import Parts, no_ids

BLOCK_STAYS = 4096  # stays scored at a time (Cohort.blocks): ~90 MB of inputs at 48 bins and 37 variables


# -- pass 2: gridded parts -> model inputs on disk ---------------------------------------------------------------
@dataclass
class Cohort:
    """The model inputs of ``N`` stays (stay-id order): ``steps.f32`` on disk plus small per-stay arrays."""

    path: Path  # steps.f32: one (3, T, V) float32 record per stay, in the order the parts gave them
    record: np.ndarray  # (N,) the record of each stay
    ids: np.ndarray  # (N,) sorted stay ids
    y: np.ndarray | None  # (N,) int64 labels; None when built without ``require_labels``
    lengths: np.ndarray  # (N,)
    statics: np.ndarray  # (N, S) static features
    summary: np.ndarray  # (N, F) summaries
    raw_statics: np.ndarray  # (N, S') the statics as read (subgroups)
    shape: tuple[int, int]  # (T, V)
    transformer: GridTransformer
    parts: Parts
    landmark_step: np.ndarray | None = None  # (N, L) the bin of each landmark snapshot, -1 where none
    landmark_summary: np.ndarray | None = None  # (N, L, F) the summaries at those bins (NaN rows where none)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def record_bytes(self) -> int:
        T, V = self.shape
        return 3 * T * V * 4

    @classmethod
    def build(cls, parts: Parts, transformer: GridTransformer, folder, require_labels: bool = True,
              progress: bool = False, landmarks=None, final: bool = True) -> Cohort:
        """Pass 2 (module docstring): fit ``transformer`` when it is not fitted yet (on the labelled stays when
        ``require_labels``), then write the inputs of those stays to ``folder/steps.f32``. With ``landmarks``
        (hours), also keep each stay's summaries at those hours and, with ``final``, at its last bin
        (:meth:`~clinical_lstm.features.impute.GridTransformer.landmark_steps`): the snapshots the summary members are
        fitted on, or a report's hours."""
        from tqdm.auto import tqdm

        labelled = parts.labelled().outcomes["stay_id"] if require_labels else None
        keep = (lambda g: np.ones(len(g.stay_ids), bool)) if labelled is None else (
            lambda g: pl.Series(g.stay_ids).is_in(labelled.implode()).to_numpy())
        if not hasattr(transformer, "center_"):
            observed, statics = [], []
            for g in parts.grids():
                k = keep(g)
                observed.append(observed_values(g.values[k]))
                statics.append(g.statics[k])
            V = len(transformer.catalogue.series)
            transformer.fit_observed([np.concatenate([o[v] for o in observed]) if observed else np.zeros(0)
                                      for v in range(V)],
                                     np.concatenate(statics) if statics else np.zeros((0, len(transformer.catalogue.statics))))
            del observed
        path = Path(folder) / "steps.f32"
        path.parent.mkdir(parents=True, exist_ok=True)
        T, V = transformer.n_bins, len(transformer.catalogue.series)
        ids, lengths, statics, summary, raw, lm_step, lm_summary = [], [], [], [], [], [], []
        bar = tqdm(total=len(parts.files), desc="model inputs", unit="part", disable=not progress, leave=False)
        with path.open("wb") as f:
            for g in parts.grids():
                bar.update(1)
                k = keep(g)
                if not k.any():
                    continue
                t = transformer.transform_grid(g)
                f.write(np.ascontiguousarray(np.stack([t.x[k], t.mask[k], t.delta[k]], axis=1), np.float32).data)
                ids.append(t.stay_ids[k])
                lengths.append(t.lengths[k])
                statics.append(t.statics[k])
                summary.append(t.summary[k])
                raw.append(g.statics[k])
                if landmarks is not None:
                    steps = transformer.landmark_steps(g.lengths, landmarks, final)
                    lm_step.append(steps[k])
                    lm_summary.append(transformer.landmark_summaries(g, steps)[k])
        bar.close()
        ids = np.concatenate(ids) if ids else no_ids(parts.id_kind)  # every stay left out: still the labels' kind
        order = np.argsort(ids, kind="stable")
        y = None if labelled is None else pl.DataFrame({"stay_id": ids[order]}).join(
            parts.outcomes.select("stay_id", "label"), on="stay_id", how="left")["label"].to_numpy().astype(np.int64)
        F = transformer.n_static_features
        cat = lambda parts_, width: np.concatenate(parts_)[order] if parts_ else np.zeros((0, width), np.float32)  # noqa: E731
        lm = (None, None)
        if landmarks is not None:
            L = len(landmarks) + bool(final)
            lm = (np.concatenate(lm_step)[order] if lm_step else np.zeros((0, L), np.int64),
                  np.concatenate(lm_summary)[order] if lm_summary else np.zeros((0, L, 0), np.float32))
        return cls(path, order, ids[order], y, np.concatenate(lengths)[order] if lengths else np.zeros(0, np.int64),
                   cat(statics, F), cat(summary, 0), cat(raw, len(transformer.catalogue.statics)), (T, V),
                   transformer, parts, *lm)

    # -- reading ------------------------------------------------------------------------------------------------
    def read(self, idx) -> np.ndarray:
        """(B, 3, T, V) the records of stays ``idx`` (positions in stay-id order); consecutive records are read
        in one call."""
        pos = self.record[np.asarray(idx, dtype=np.int64)]
        T, V = self.shape
        out = np.empty((len(pos), 3, T, V), np.float32)
        if not len(pos):
            return out
        srt = np.argsort(pos, kind="stable")
        p = pos[srt]
        starts = np.flatnonzero(np.r_[True, np.diff(p) != 1])
        ends = np.r_[starts[1:], len(p)]
        size = self.record_bytes
        most = max(1, (64 << 20) // size)  # records per read: at most 64 MB in flight beside ``out``
        with self.path.open("rb", buffering=0) as f:
            for s0, e0 in zip(starts.tolist(), ends.tolist(), strict=True):
                for s in range(s0, e0, most):
                    e = min(s + most, e0)
                    dst = srt[s:e]
                    inplace = dst[-1] - dst[0] == e - s - 1 and bool(np.all(np.diff(dst) == 1))
                    block = out[dst[0]:dst[-1] + 1] if inplace else np.empty((e - s, 3, T, V), np.float32)
                    f.seek(int(p[s]) * size)
                    if f.readinto(block) != block.nbytes:
                        raise DataError(f"{self.path} is shorter than its {len(self)} stays: it changed during the job")
                    if not inplace:
                        out[dst] = block
        return out

    def tensors(self, idx=None) -> Tensors:
        """The :class:`~clinical_lstm.features.impute.Tensors` of stays ``idx`` (default: all) — in memory."""
        idx = np.arange(len(self)) if idx is None else np.asarray(idx, dtype=np.int64)
        steps = self.read(idx)
        return Tensors(np.ascontiguousarray(steps[:, 0]), np.ascontiguousarray(steps[:, 1]),
                       np.ascontiguousarray(steps[:, 2]), self.lengths[idx], self.statics[idx], self.ids[idx],
                       self.summary[idx])

    def blocks(self, size: int = BLOCK_STAYS) -> Iterator[Tensors]:
        """The tensors of every stay, ``size`` stays at a time in stay-id order: scoring a cohort in bounded
        memory (``size`` a multiple of the scoring batch, 512, so the batches are those of one call on all)."""
        for start in range(0, len(self), size):
            yield self.tensors(np.arange(start, min(start + size, len(self))))

    def apply(self, fn) -> np.ndarray:
        """(N,) ``fn(tensors)`` of every stay (e.g. a model's logits), computed block by block (:meth:`blocks`)."""
        return np.concatenate([fn(t) for t in self.blocks()]) if len(self) else np.zeros(0)

    def source(self, device, in_memory_gb: float = 1.0):
        """What training iterates over: the tensors themselves on ``device`` when the records fit
        ``in_memory_gb``, else a :class:`StayFile` that reads each batch from disk."""
        import torch

        if len(self) * self.record_bytes <= in_memory_gb * 2**30:
            steps = torch.from_numpy(self.read(np.arange(len(self)))).to(device)
            return {"x": steps[:, 0], "mask": steps[:, 1], "delta": steps[:, 2],
                    "statics": torch.from_numpy(self.statics).to(device),
                    "lengths": torch.from_numpy(self.lengths).to(device)}
        return StayFile(self, device)


class StayFile:
    """Batches of a :class:`Cohort` read from disk on demand (:func:`clinical_lstm.model.network.batch_of`)."""

    def __init__(self, cohort: Cohort, device):
        import torch

        self.cohort, self.device = cohort, device
        self.statics = torch.from_numpy(cohort.statics)
        self.lengths = torch.from_numpy(cohort.lengths)

    def __len__(self) -> int:
        return len(self.cohort)

    @property
    def widths(self) -> tuple[int, int]:
        return self.cohort.shape[1], self.cohort.statics.shape[1]

    def batch(self, idx) -> dict:
        import torch

        idx = np.asarray(idx.cpu() if hasattr(idx, "cpu") else idx, dtype=np.int64)
        steps = torch.from_numpy(self.cohort.read(idx)).to(self.device)
        return {"x": steps[:, 0], "mask": steps[:, 1], "delta": steps[:, 2],
                "statics": self.statics[idx].to(self.device), "lengths": self.lengths[idx].to(self.device)}
