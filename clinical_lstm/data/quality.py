"""The data-quality report of a validation: stays read, kept and rejected with their reasons, rows removed or
changed per rule and variable, and the variables a rule removed entirely from a kept stay; its JSON and its text.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from ..files import write_json

#: Row rules in the order they are checked; a row is charged to the first one it breaks.
ROW_RULES = ("unparseable_time", "unknown_variable", "unparseable_value", "negative_time", "past_window",
             "static_after_admission", "sentinel_minus_one", "out_of_range")

ACTIONS = {
    "unparseable_time": "row dropped",
    "unparseable_value": "value -> missing",
    "unknown_variable": "row dropped",
    "negative_time": "row dropped",
    "past_window": "row dropped",
    "static_after_admission": "row dropped",
    "sentinel_minus_one": "value -> missing",
    "out_of_range": "value -> missing",
    "duplicate_row": "row dropped",
    "same_time_conflict": "aggregated in bin (kept)",
    "unreadable_file": "stay rejected",
    "record_id_mismatch": "stay rejected",
    "no_time_series": "stay rejected",
    "no_label": "stay rejected",
}


_COUNT_SCHEMA = {"rule": pl.String, "action": pl.String, "variable": pl.String, "rows": pl.Int64}
_REMOVED_SCHEMA = {"stay_id": pl.Int64, "variable": pl.String, "rule": pl.String, "rows": pl.Int64}


@dataclass
class QualityReport:
    """Counts per rule and variable, plus the rejected stays.

    ``counts`` is a polars frame ``rule, action, variable, rows``; ``rejects`` is ``stay_id, reason``.
    ``known_variables`` are the catalogue's names (set by :func:`~clinical_lstm.data.validate.validate`): the only variable names the
    tracking-safe :meth:`to_dict` writes; None names none.
    """

    counts: pl.DataFrame
    rejects: pl.DataFrame
    n_stays_read: int
    n_stays_kept: int
    n_rows_read: int
    n_rows_kept: int
    window_hours: float
    sources: list[str] = field(default_factory=list)
    stay_rules: pl.DataFrame | None = None  # stay_id, rule, rows: per-stay row rules (never logged: has ids)
    known_variables: tuple[str, ...] | None = None
    empty_sources: list[str] = field(default_factory=list)  # inputs without a stay (0 bytes, a header only)
    labels_without_stay: int = 0  # labels (or outcomes) naming a stay that is not in the data
    removed: pl.DataFrame | None = None  # stay_id, variable, rule, rows: a variable a rule removed whole in a kept stay

    def to_dict(self, include_stay_ids: bool = True) -> dict:
        """A JSON-able dict. ``include_stay_ids=False`` gives the version safe to log to tracking: no stay ids
        and no free text from the input. Counts of names outside :attr:`known_variables` (an unknown
        variable's name may be anything: an id, a patient's name) become one entry per rule with a null
        ``variable``, the rows and the number of distinct ``names``."""
        by_reason = self.rejects.group_by("reason").len().sort("reason")
        out = {
            "sources": self.sources,
            "empty_sources": self.empty_sources,
            "labels_without_stay": self.labels_without_stay,
            "window_hours": self.window_hours,
            "stays": {"read": self.n_stays_read, "kept": self.n_stays_kept,
                      "rejected": self.n_stays_read - self.n_stays_kept,
                      "rejected_by_reason": dict(zip(by_reason["reason"], by_reason["len"], strict=True))},
            "rows": {"read": self.n_rows_read, "kept": self.n_rows_kept},
            "rules": [{"rule": r, "action": a} for r, a in ACTIONS.items()],
            "counts": self.counts.to_dicts() if include_stay_ids else self._counts_without_input_names(),
        }
        removed = self.removed if self.removed is not None else pl.DataFrame(schema=_REMOVED_SCHEMA)
        if include_stay_ids:
            out["rejects"] = self.rejects.to_dicts()
            out["all_values_removed"] = removed.sort("stay_id", "variable", "rule").to_dicts()
        else:  # per variable and rule: how many stays, no ids; a name not the catalogue's is not written
            known = pl.col("variable").is_in(list(self.known_variables or ())).fill_null(False)
            out["all_values_removed"] = (
                removed.with_columns(pl.when(known).then(pl.col("variable")).alias("variable"))
                .group_by("variable", "rule").agg(pl.len().cast(pl.Int64).alias("stays"), pl.col("rows").sum())
                .sort("variable", "rule", nulls_last=True).to_dicts())
        return out

    def _counts_without_input_names(self) -> list[dict]:
        # a row rule's count whose name is not the catalogue's (null included) names something from the input
        known = pl.col("variable").is_in(list(self.known_variables or ())).fill_null(False)
        named = pl.col("rule").is_in(ROW_RULES) & ~known
        hidden = (self.counts.filter(named).group_by("rule", "action")
                  .agg(pl.lit(None, pl.String).alias("variable"), pl.col("rows").sum(),
                       pl.col("variable").n_unique().cast(pl.Int64).alias("names")))
        rows = (pl.concat([self.counts.filter(~named), hidden], how="diagonal")
                .sort("rule", "variable", nulls_last=True).to_dicts())
        return [{k: v for k, v in r.items() if k != "names" or v is not None} for r in rows]

    @classmethod
    def merge(cls, parts: list[QualityReport], window_hours: float) -> QualityReport:
        """One report for stays validated in chunks (each stay in exactly one part): counts added up, rejects
        and per-stay rules gathered, sources in first-seen order."""
        if not parts:
            return cls(pl.DataFrame(schema=_COUNT_SCHEMA), pl.DataFrame(schema={"stay_id": pl.Int64, "reason": pl.String}),
                       0, 0, 0, 0, window_hours)
        counts = (pl.concat([p.counts for p in parts]).group_by("rule", "action", "variable")
                  .agg(pl.col("rows").sum()).sort("rule", "variable", nulls_last=True))
        rules = [p.stay_rules for p in parts if p.stay_rules is not None]
        removed = [p.removed for p in parts if p.removed is not None]
        # a name is known when every part that names variables knows it
        naming = [p.known_variables for p in parts if p.counts["variable"].is_not_null().any()]
        known = (None if not naming or None in naming
                 else tuple(v for v in naming[0] if all(v in k for k in naming)))
        return cls(counts, pl.concat([p.rejects for p in parts]).sort("stay_id"),
                   sum(p.n_stays_read for p in parts), sum(p.n_stays_kept for p in parts),
                   sum(p.n_rows_read for p in parts), sum(p.n_rows_kept for p in parts), window_hours,
                   list(dict.fromkeys(s for p in parts for s in p.sources)),
                   pl.concat(rules) if rules else None, known,
                   list(dict.fromkeys(s for p in parts for s in p.empty_sources)),
                   sum(p.labels_without_stay for p in parts), pl.concat(removed) if removed else None)

    @classmethod
    def from_dict(cls, d: dict, id_dtype=pl.Int64, known_variables=None) -> QualityReport:
        """The report :meth:`to_dict` (with stay ids) wrote; per-stay rules are not kept in it.
        ``known_variables``: the catalogue's names it was validated with (:attr:`known_variables`)."""
        counts = pl.DataFrame(d["counts"], schema=_COUNT_SCHEMA)
        rejects = pl.DataFrame(d.get("rejects", []), schema={"stay_id": id_dtype, "reason": pl.String})
        gone = d.get("all_values_removed", [])
        removed = (pl.DataFrame(gone, schema={**_REMOVED_SCHEMA, "stay_id": id_dtype})
                   if all("stay_id" in r for r in gone) else None)  # the form without ids has no stays to name
        return cls(counts, rejects, d["stays"]["read"], d["stays"]["kept"], d["rows"]["read"], d["rows"]["kept"],
                   d["window_hours"], list(d["sources"]),
                   known_variables=None if known_variables is None else tuple(known_variables),
                   empty_sources=list(d.get("empty_sources", [])),
                   labels_without_stay=int(d.get("labels_without_stay", 0)), removed=removed)

    def write(self, path: str | Path, include_stay_ids: bool = True) -> Path:
        """Write the report as JSON, atomically."""
        return write_json(path, self.to_dict(include_stay_ids))

    def table(self):
        """The counts as a pandas table (rule x variable), for notebooks."""
        return self.counts.to_pandas()

    def __str__(self) -> str:
        totals = self.counts.group_by("rule", "action").agg(pl.col("rows").sum()).sort("rows", descending=True)
        lines = [f"stays: {self.n_stays_read} read, {self.n_stays_kept} kept, "
                 f"{self.n_stays_read - self.n_stays_kept} rejected; rows: {self.n_rows_read} read, "
                 f"{self.n_rows_kept} kept"]
        lines += [f"  {r['rule']:<24} {r['action']:<26} {r['rows']:>9,}" for r in totals.iter_rows(named=True)]
        if self.empty_sources:
            lines.append(f"  no stays in {', '.join(self.empty_sources)} (empty file or header only)")
        if self.labels_without_stay:
            lines.append(f"  {self.labels_without_stay:,} label(s) name a stay that is not in the data (a partial "
                         f"extract?)")
        if self.removed is not None and self.removed.height:
            whole = (self.removed.group_by("variable", "rule").agg(pl.len().alias("stays"), pl.col("rows").sum())
                     .sort("variable", "rule"))
            lines += [f"  {r['variable']}: every value removed in {r['stays']:,} stay(s) ({r['rule']}, {r['rows']:,} "
                      f"rows)" for r in whole.iter_rows(named=True)]
        return "\n".join(lines)
