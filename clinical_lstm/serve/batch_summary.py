"""A batch job's accounting: each chunk's manifest entry, the counts by reason and quality flag, the job's
``summary.json`` and its closing line.
"""

from __future__ import annotations

import polars as pl

from ..data.chunks import (
    NULL_NAME,
    Chunk,
)


def _chunk_entry(c: Chunk, scored: pl.DataFrame, rejects: pl.DataFrame, report, seconds: dict) -> dict:
    by_reason = rejects.group_by("reason").len().sort("reason")
    rules = report.counts.filter(pl.col("variable").is_not_null() | ~pl.col("action").str.contains("rejected"))
    by_rule = rules.group_by("rule").agg(pl.col("rows").sum()).sort("rule")
    unknown = report.counts.filter(pl.col("rule") == "unknown_variable")
    return {"stays": c.stays, "scored": scored.height - rejects.height, "rejected": rejects.height,
            "flagged": int(scored["flag"].sum()), "rows_read": report.n_rows_read,
            "rejected_by_reason": dict(zip(by_reason["reason"], by_reason["len"], strict=True)),
            "rows_by_rule": dict(zip(by_rule["rule"], by_rule["rows"], strict=True)),
            "unknown_variables": _by_name(unknown["variable"], unknown["rows"]),
            "quality_flags": _flag_counts(scored), "seconds": {k: round(v, 3) for k, v in seconds.items()}}


def _by_name(names: pl.Series, counts: pl.Series) -> dict[str, int]:
    """``{name: count}`` with a null name counted under :data:`NULL_NAME`, so that the keys sort and survive the
    manifest's JSON as they are (a ``None`` key would come back as ``"null"``)."""
    totals: dict[str, int] = {}
    for name, n in zip(names.to_list(), counts.to_list(), strict=True):
        key = NULL_NAME if name is None else str(name)
        totals[key] = totals.get(key, 0) + int(n)
    return totals


def _flag_counts(scored: pl.DataFrame) -> dict:
    flags = scored.select(pl.col("quality_flags").str.split(";").explode()).filter(pl.col("quality_flags") != "")
    counts = flags.group_by("quality_flags").len().sort("quality_flags")
    return dict(zip(counts["quality_flags"], counts["len"], strict=True))


def _add(total: dict, part: dict) -> dict:
    for k, v in part.items():
        total[k] = total.get(k, 0) + v
    return dict(sorted(total.items()))


def _summary(job: dict, version, inputs, done, threshold, counts, out, rejects_path, seconds, scored_at) -> dict:
    n_scored, n_rejected = counts
    n_stays = n_scored + n_rejected
    totals = {k: {} for k in ("rejected_by_reason", "rows_by_rule", "unknown_variables", "quality_flags")}
    for d in done:
        for k, total in totals.items():
            totals[k] = _add(total, d[k])
    return {
        "status": "complete", "model": job["model_uri"], "model_version": version,
        "catalogue": job["catalogue"][:12], "scored_at": scored_at,
        "inputs": [{"name": i.name, "kind": i.kind, "stays": len(i.stay_ids), "empty": i.empty,
                    "contiguous": i.contiguous, "ignored_members": i.ignored_members} for i in inputs],
        "stays_read": n_stays, "scored": n_scored, "rejected": n_rejected,
        "rejected_by_reason": totals["rejected_by_reason"], "flagged": sum(d["flagged"] for d in done),
        "threshold": threshold, "quality_flags": totals["quality_flags"],
        "rows_read": sum(d["rows_read"] for d in done), "rows_by_rule": totals["rows_by_rule"],
        "unknown_variables": totals["unknown_variables"], "chunks": len(done), "chunk_stays": job["chunk_stays"],
        "output": str(out), "rejects": str(rejects_path),
        "seconds": round(seconds, 3), "stays_per_second": round(n_stays / seconds, 1) if seconds else None,
        "chunk_seconds": {k: round(sum(d["seconds"][k] for d in done), 1) for k in ("read", "score", "write")},
    }


def _closing_line(s: dict) -> str:
    reasons = ", ".join(f"{k} {v:,}" for k, v in s["rejected_by_reason"].items()) or "none"
    return (f"{s['stays_read']:,} stays read: {s['scored']:,} scored ({s['flagged']:,} flagged), "
            f"{s['rejected']:,} rejected ({reasons}) in {s['seconds']:.1f} s ({s['stays_per_second'] or 0:,.0f} "
            f"stays/s) -> {s['output']}")
