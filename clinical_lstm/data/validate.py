"""Rules applied to the raw long table, and the data-quality report they produce.

Every rule has one action. Row-level rules drop the row (for a long table, "value set missing" and
"row dropped" are the same thing: the observation is not used) and are counted per variable. Stay-level
rules reject the whole stay with a reason. No stay disappears: each stay read is either in the cleaned
table's stay list or in ``report.rejects`` with its reason.

=========================  ==================  ======================================================
rule                       action              meaning
=========================  ==================  ======================================================
unparseable_time           row dropped         time is neither hours (a number) nor ``HH:MM`` text
unparseable_value          value -> missing    value is not a number
unknown_variable           row dropped         variable not in the catalogue (counted by its name; logged to
                                               tracking by number only: a name is input text)
negative_time              row dropped         time < 0 h
past_window                row dropped         time > window (a row at exactly the window end is kept)
static_after_admission     row dropped         a static-only descriptor (e.g. Age) at time > 0
sentinel_minus_one         value -> missing    value is -1 and -1 is outside the plausible range
out_of_range               value -> missing    value outside the catalogue's [lower, upper]
duplicate_row              row dropped         same stay, time, variable and value as an earlier row
same_time_conflict         aggregated          same stay, time, variable, different values (kept)
unreadable_file            stay rejected       the stay file could not be parsed (binary, not UTF-8, a link)
record_id_mismatch         stay rejected       the file's RecordID row names another stay than its file name
no_time_series             stay rejected       no usable time-series observation in the window
no_label                   stay rejected       training only: the stay has no outcome label
=========================  ==================  ======================================================

``time`` is hours since admission (:func:`time_hours`): a number, ``HH:MM`` text, or a duration (a Parquet
Duration, a pandas timedelta), converted exactly to hours. A timestamp (Datetime, Date, Time) is an error: the
long format carries no admission time to measure it from. Every time is then snapped to the nearest whole second
(:func:`snap_seconds`) before any rule, duplicate check or bin: the package's one time resolution, so rows less
than a second apart are one time in every path and in any row order.

A catalogue variable whose every row in a kept stay was removed by a rule (:data:`REMOVAL_RULES`) is listed in
``report.removed`` and flagged on the stay (``all_values_removed:<variable>:<rule>``, :data:`QUALITY_FLAGS`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from .catalogue import Catalogue
from .quality import ACTIONS, ROW_RULES, QualityReport
from .sources import RawData
from .times import snap_seconds, time_hours

# -- row rules ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RuleTable:
    """What the row rules need of a catalogue, as arrays indexed by catalogue code (the variable's position)."""

    lower: np.ndarray
    upper: np.ndarray
    static_only: np.ndarray
    window_hours: float

    @classmethod
    def of(cls, catalogue: Catalogue, window_hours: float) -> RuleTable:
        v = catalogue.variables
        return cls(np.array([x.lower for x in v], dtype=np.float64), np.array([x.upper for x in v], dtype=np.float64),
                   np.array([x.kind == "static" for x in v], dtype=bool), float(window_hours))


def row_rules(time: np.ndarray, code: np.ndarray, value: np.ndarray, table: RuleTable) -> np.ndarray:
    """The rule each row breaks: 0 for a usable row, else ``1 + ROW_RULES.index(rule)`` (int8).

    ``time`` in hours and ``value`` as float64 (NaN = unparseable); ``code`` the catalogue position of the
    variable, -1 when it is not in the catalogue. The single definition of the row rules: batch validation
    and the stream both call it.
    """
    known = code >= 0
    c = np.where(known, code, 0)
    lower, upper = table.lower[c], table.upper[c]
    with np.errstate(invalid="ignore"):
        conditions = (
            ~np.isfinite(time),
            ~known,
            ~np.isfinite(value),
            time < 0,
            time > table.window_hours,
            table.static_only[c] & (time > 0),
            (value == -1) & ((lower > -1) | (upper < -1)),
            (value < lower) | (value > upper),
        )
    rule = np.zeros(len(time), np.int8)
    for k in range(len(conditions), 0, -1):  # the last assignment wins: the first rule broken is charged
        rule[conditions[k - 1]] = k
    return rule


# -- same-time rows -------------------------------------------------------------------------------------------
def time_key(row: np.ndarray, code: np.ndarray, n_codes: int, time: np.ndarray, window_hours: float) -> np.ndarray:
    """int64 key ordering by (row, code, time to the second); raises if it would overflow."""
    bits = int(np.ceil(np.log2(window_hours * 3600 + 2)))
    if (int(row.max(initial=0)) + 1) * n_codes * 2**bits >= 2**62:
        raise ValueError(f"too many stays ({row.max() + 1}) for one validation call; score in chunks")
    return ((row.astype(np.int64) * n_codes + code) << bits) | np.rint(time * 3600).astype(np.int64)


def order_rows(key: np.ndarray, value: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """**The rule for rows of one stay and variable at the same time** (to the second), for every path.

    Rows are ordered by ``key`` (stay, variable, time; :func:`time_key`) and, among rows sharing a key, by
    value. A row equal in key and value to the one before it is an exact duplicate and is dropped
    (``duplicate_row``); the other rows sharing a key are all kept (``same_time_conflict``) and combined in
    their bin by the variable's aggregation (:func:`clinical_lstm.data.grid.aggregate`), reading them in this
    order: a ``last`` takes the largest of simultaneous values, a ``mean`` averages them. Since the order
    depends on the values only, no row order (a file's, a chunk boundary's, a Spark shuffle's, a stream's
    updates) can change a result.

    Returns
    -------
    order : (n,) int64, the permutation that sorts the rows
    keep : (n,) bool, in sorted order: False for exact duplicates
    conflict : (n,) bool, in sorted order: a kept row sharing its key with an earlier kept row
    """
    order = np.argsort(key, kind="stable")  # the order np.lexsort((value, key)) gives, 4x faster: keys rarely tie,
    k = key[order]                             # so only the rows in runs of equal keys are sorted by value
    tie = k[1:] == k[:-1]
    if tie.any():
        idx = np.flatnonzero(np.concatenate([[False], tie]) | np.concatenate([tie, [False]]))
        order[idx] = order[idx][np.lexsort((value[order[idx]], k[idx]))]
    v = value[order]
    same_key = np.concatenate([[False], tie])
    keep = ~(same_key & np.concatenate([[False], v[1:] == v[:-1]]))
    return order, keep, same_key & keep


def validate(raw: RawData, catalogue: Catalogue, window_hours: float = 48.0,
             require_labels: bool = False) -> tuple[pl.DataFrame, pl.Series, QualityReport]:
    """Apply every rule.

    Returns
    -------
    clean : polars.DataFrame
        ``stay_id`` (Int64 or String, as read), ``time`` Float64 hours in [0, window], ``variable`` String,
        ``value`` Float64,
        only catalogue variables, only kept stays; sorted by stay, catalogue order of variable, time, value.
    kept : polars.Series
        The kept stay ids (sorted). ``kept`` plus ``report.rejects`` is every stay read.
    report : QualityReport
    """
    schema = raw.long.schema
    time = time_hours(schema["time"], ", ".join(raw.sources) or "the data")
    value = (pl.col("value").str.strip_chars() if schema["value"] == pl.String else pl.col("value"))
    codes = pl.DataFrame({"variable": catalogue.names, "code": np.arange(len(catalogue), dtype=np.int64)})
    df = raw.long.lazy().select(
        pl.col("stay_id"),
        pl.col("variable").cast(pl.String).str.strip_chars(),
        time.alias("time"),
        value.cast(pl.Float64, strict=False).alias("value"),
    ).join(codes.lazy(), on="variable", how="left").collect()
    df = df.with_columns(pl.Series("time", snap_seconds(df["time"].fill_null(np.nan).to_numpy())))
    rule = row_rules(df["time"].fill_null(np.nan).to_numpy(), df["code"].fill_null(-1).to_numpy(),
                     df["value"].fill_null(np.nan).to_numpy(), RuleTable.of(catalogue, window_hours))
    rule_name = pl.Series("rule", rule).replace_strict(dict(enumerate(ROW_RULES, 1)), default=None,
                                                      return_dtype=pl.String)
    broken = df.select("stay_id", "variable").with_columns(rule_name).filter(pl.Series(rule > 0))
    row_counts = broken.group_by("rule", "variable").len("rows")
    stay_rules = broken.group_by("stay_id", "rule").len("rows")
    ok = df.filter(pl.Series(rule == 0)).select("stay_id", "time", "variable", "value", "code")
    clean, dup_conflict = _deduplicate(ok, len(catalogue), window_hours, raw.stays)
    row_counts = pl.concat([row_counts.with_columns(pl.col("rows").cast(pl.Int64)), dup_conflict])

    # Stay-level rules.
    series_codes = [i for i, v in enumerate(catalogue.variables) if v.is_series]
    has_series = clean.filter(pl.col("code").is_in(series_codes))["stay_id"].unique()
    clean = clean.drop("code")
    all_stays = raw.stays
    reasons = []
    if raw.unreadable:
        reasons.append(pl.DataFrame({"stay_id": list(raw.unreadable), "reason": list(raw.unreadable.values())},
                                    schema={"stay_id": raw.stays.dtype, "reason": pl.String}))
    no_series = all_stays.filter(~all_stays.is_in(has_series.implode()) & ~all_stays.is_in(list(raw.unreadable)))
    reasons.append(pl.DataFrame({"stay_id": no_series, "reason": ["no_time_series"] * len(no_series)},
                                schema={"stay_id": raw.stays.dtype, "reason": pl.String}))
    if require_labels:
        labelled = raw.outcomes["stay_id"] if raw.outcomes is not None else pl.Series([], dtype=raw.stays.dtype)
        taken = pl.concat([r["stay_id"] for r in reasons])
        nolab = all_stays.filter(~all_stays.is_in(labelled.implode()) & ~all_stays.is_in(taken.implode()))
        reasons.append(pl.DataFrame({"stay_id": nolab, "reason": ["no_label"] * len(nolab)},
                                    schema={"stay_id": raw.stays.dtype, "reason": pl.String}))
    rejects = pl.concat(reasons).sort("stay_id")
    kept = all_stays.filter(~all_stays.is_in(rejects["stay_id"].implode())).sort()
    clean = clean.filter(pl.col("stay_id").is_in(kept.implode()))
    removed = _removed_whole(broken, clean, kept, catalogue)

    stay_counts = rejects.group_by("reason").len("rows").select(
        pl.col("reason").alias("rule"), pl.lit(None, pl.String).alias("variable"), pl.col("rows").cast(pl.Int64))
    counts = (pl.concat([row_counts, stay_counts])
              .with_columns(pl.col("rule").replace_strict(ACTIONS, return_dtype=pl.String).alias("action"))
              .select("rule", "action", "variable", "rows")
              .sort("rule", "variable", nulls_last=True))
    report = QualityReport(counts=counts, rejects=rejects, n_stays_read=len(all_stays), n_stays_kept=len(kept),
                           n_rows_read=raw.long.height, n_rows_kept=clean.height, window_hours=window_hours,
                           sources=list(raw.sources), stay_rules=stay_rules,
                           known_variables=tuple(catalogue.names), removed=removed)
    if report.n_stays_kept + report.rejects.height != report.n_stays_read:  # internal invariant, never user error
        raise AssertionError("stay accounting broken: kept + rejected != read")
    return clean, kept, report


def _deduplicate(ok: pl.DataFrame, n_codes: int, window_hours: float, stays: pl.Series):
    """Order the usable rows by :func:`order_rows`, drop exact duplicates; count duplicates and conflicts.
    Returns the rows (with their ``code``) and the counts."""
    empty = pl.DataFrame(schema={"rule": pl.String, "variable": pl.String, "rows": pl.Int64})
    if ok.height == 0:
        return ok, empty
    runs = ok["stay_id"].rle().struct.unnest()  # rows mostly come grouped by stay: look up each run, not each row
    sid, length = runs["value"], runs["len"].to_numpy()
    if not stays.len() or not (stays.gather(stays.search_sorted(sid).clip(0, stays.len() - 1)) == sid).all():
        stays = sid.unique().sort()  # rows of stays the caller did not list: rank among the rows' own stays
    pos = np.repeat(stays.search_sorted(sid).to_numpy().astype(np.int64), length)  # the stay's rank, any id kind
    key = time_key(pos, ok["code"].to_numpy(), n_codes, ok["time"].to_numpy(), window_hours)
    order, keep, conflict = order_rows(key, ok["value"].to_numpy())
    ok = ok.select(pl.all().gather(pl.Series(order)))  # columns gathered in parallel
    counts = [ok.filter(pl.Series(mask)).group_by("variable").len("rows")
              .select(pl.lit(rule).alias("rule"), "variable", pl.col("rows").cast(pl.Int64))
              for rule, mask in (("duplicate_row", ~keep), ("same_time_conflict", conflict)) if mask.any()]
    return ok.filter(pl.Series(keep)), pl.concat([empty, *counts])


def _removed_whole(broken: pl.DataFrame, clean: pl.DataFrame, kept: pl.Series, catalogue: Catalogue) -> pl.DataFrame:
    """``stay_id, variable, rule, rows``: each catalogue variable of a kept stay with rows removed by a
    :data:`REMOVAL_RULES` rule and no row left in ``clean``."""
    hit = (broken.filter(pl.col("rule").is_in(REMOVAL_RULES) & pl.col("variable").is_in(catalogue.names)
                         & pl.col("stay_id").is_in(kept.implode()))
           .group_by("stay_id", "variable", "rule").len("rows"))
    if hit.height:
        left = clean.select("stay_id", "variable").join(hit.select("stay_id", "variable").unique(),
                                                          on=["stay_id", "variable"], how="semi")
        hit = hit.join(left.unique(), on=["stay_id", "variable"], how="anti")
    return hit.select(pl.col("stay_id").cast(kept.dtype), "variable", "rule", pl.col("rows").cast(pl.Int64)).sort(
        "stay_id", "variable", "rule")


# -- per-stay quality flags ------------------------------------------------------------------------------------
#: Flags given to a scored stay (``quality_flags``, ";"-joined, "" when none). They never change the risk; they
#: tell a reader how much data stood behind it.
QUALITY_FLAGS = {
    "few_observations": "fewer than 10 time-series observations in the window",
    "short_record": "the last time-series observation is in the first quarter of the window",
    "values_removed": "10 % or more of the stay's rows were unusable (out of range, sentinel, unparseable, "
                      "negative time, static after admission)",
    "unknown_variables": "the stay has rows of variables not in the model's catalogue (ignored)",
    "no_statics": "none of the static descriptors (age, sex, ...) was given; training means were used",
    "all_values_removed": "every row of a catalogue variable in the stay was removed by a rule: one flag per "
                          "variable, naming it and the rules (``all_values_removed:Temp:out_of_range``; several "
                          "rules joined by ``+`` in the order they are checked)",
}
#: Rules whose rows count in the ``values_removed`` flag.
VALUE_RULES = ("unparseable_time", "unparseable_value", "negative_time", "sentinel_minus_one", "out_of_range",
               "static_after_admission")
#: Rules whose removal of every row of a variable flags the stay: wrong values, not a row after the window (data
#: the model never reads) nor a -1 sentinel (the source's own "not measured", as PhysioNet's Height -1).
REMOVAL_RULES = ("unparseable_time", "unparseable_value", "negative_time", "static_after_admission", "out_of_range")


def stay_quality(clean: pl.DataFrame, kept: pl.Series, report: QualityReport, catalogue: Catalogue) -> pl.DataFrame:
    """``stay_id, n_observations, quality_flags`` for every kept stay (see :data:`QUALITY_FLAGS`)."""
    is_series = pl.col("variable").is_in(catalogue.series)
    per_stay = clean.group_by("stay_id").agg(  # statics as the grid reads them: time-0 rows
        pl.len().alias("n_observations"),
        is_series.sum().alias("n_series"),
        pl.col("time").filter(is_series).max().alias("last_hour"),
        (pl.col("variable").is_in(catalogue.statics) & (pl.col("time") == 0)).any().alias("has_static"))
    rules = report.stay_rules if report.stay_rules is not None else pl.DataFrame(
        schema={"stay_id": kept.dtype, "rule": pl.String, "rows": pl.UInt32})
    bad = rules.group_by("stay_id").agg(
        pl.col("rows").filter(pl.col("rule").is_in(VALUE_RULES)).sum().alias("n_bad"),
        (pl.col("rows").filter(pl.col("rule") == "unknown_variable").sum() > 0).alias("has_unknown"))
    df = (pl.DataFrame({"stay_id": kept}).join(per_stay, on="stay_id", how="left")
          .join(bad, on="stay_id", how="left"))
    return flag_stays(df, report.removed, catalogue, report.window_hours)


def flag_stays(stats: pl.DataFrame, removed: pl.DataFrame | None, catalogue: Catalogue,
               window_hours: float) -> pl.DataFrame:
    """**The rule for a stay's quality flags** (:data:`QUALITY_FLAGS`), for every path: ``stay_id,
    n_observations, quality_flags`` from per-stay counts.

    ``stats``: ``stay_id, n_observations`` (clean rows), ``n_series`` (clean series rows), ``last_hour`` (of
    the last series row), ``has_static`` (a static at time 0), ``n_bad`` (rows removed by a value rule),
    ``has_unknown``; ``removed``: ``stay_id, variable, rule, rows`` as :attr:`QualityReport.removed`. Batch
    and ``predict`` (:func:`stay_quality`) and the stream's ``quality_flags`` call it.
    """
    df = stats.with_columns(pl.col("n_observations", "n_series", "n_bad").fill_null(0).cast(pl.Int64),
                            pl.col("has_static", "has_unknown").fill_null(False))
    whole = pl.lit([], dtype=pl.List(pl.String))
    if removed is not None and removed.height:
        order = {n: i for i, n in enumerate(catalogue.names)}
        named = (removed.with_columns(
            pl.col("variable").replace_strict(order, default=len(order), return_dtype=pl.Int64).alias("_v"),
            pl.col("rule").replace_strict({r: i for i, r in enumerate(ROW_RULES)}, default=len(ROW_RULES),
                                          return_dtype=pl.Int64).alias("_r"))
            .sort("stay_id", "_v", "variable", "_r")
            .group_by("stay_id", "_v", "variable", maintain_order=True).agg(pl.col("rule").str.join("+"))
            .group_by("stay_id", maintain_order=True)
            .agg(pl.format("all_values_removed:{}:{}", "variable", "rule").alias("_whole")))
        df = df.join(named.with_columns(pl.col("stay_id").cast(df.schema["stay_id"])), on="stay_id", how="left",
                     maintain_order="left")
        whole = pl.col("_whole").fill_null(whole)
    flags = [
        (pl.col("n_series") < 10, "few_observations"),
        (pl.col("last_hour").fill_null(0.0) < window_hours / 4, "short_record"),
        (pl.col("n_bad") >= 0.1 * (pl.col("n_bad") + pl.col("n_observations")), "values_removed"),
        (pl.col("has_unknown"), "unknown_variables"),
        (~pl.col("has_static"), "no_statics"),
    ]
    text = pl.concat_list([*(pl.when(cond).then(pl.lit(name)).otherwise(None) for cond, name in flags), whole])
    return df.select("stay_id", "n_observations", text.list.drop_nulls().list.join(";").alias("quality_flags"))
