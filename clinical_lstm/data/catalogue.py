"""The variable catalogue: the single source of names, units, plausible ranges and in-bin aggregation.

The default catalogue ships as ``clinical_lstm/data/catalogue.csv`` and covers every PhysioNet 2012
variable. A hospital passes its own CSV with the same columns:

========== ===================================================================================
column     meaning
========== ===================================================================================
name       variable name as it appears in the long table's ``variable`` column (case-sensitive; not empty)
unit       unit the values must be in (documentation; values are never converted)
lower      smallest plausible value, inclusive; values below become missing (rule ``out_of_range``)
upper      largest plausible value, inclusive
aggregation how several values in one grid bin combine: ``mean``, ``last``, ``sum``, ``max``, ``min``
kind       ``static`` (descriptor only), ``vital`` or ``lab`` (time series)
static     ``true`` if the value at time 0 is also a static feature (e.g. admission Weight), else ``false``
description free text (optional column)
========== ===================================================================================

Every bound is a finite number: there is no "no bound" spelling (an empty cell, ``nan`` or ``inf`` is
an error), so a variable without a plausible limit gets a wide finite one. ``static`` is ``true`` or
``false`` in any case, nothing else. A catalogue lists at least one time-series variable (``vital`` or
``lab``): the model reads nothing else. Each of these is a one-line ``ValueError`` naming the file and
line when the catalogue is read, before any data are.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

AGGREGATIONS = ("mean", "last", "sum", "max", "min")
KINDS = ("static", "vital", "lab")
COLUMNS = ("name", "unit", "lower", "upper", "aggregation", "kind", "static", "description")
STATIC_SPELLINGS = {"true": True, "false": False}  # the ``static`` column, compared in lower case


@dataclass(frozen=True)
class Variable:
    name: str
    unit: str
    lower: float  # inclusive plausible minimum, in `unit`
    upper: float  # inclusive plausible maximum, in `unit`
    aggregation: str  # one of AGGREGATIONS
    kind: str  # one of KINDS
    static: bool  # the time-0 value is a static feature
    description: str = ""

    def __post_init__(self):
        """Checks one variable; :meth:`Catalogue.from_csv_text` prefixes the file and line to the message."""
        if not isinstance(self.name, str) or not self.name.strip() or self.name != self.name.strip():
            raise ValueError(f"name must be non-empty text without surrounding spaces, got {self.name!r}")
        if not (math.isfinite(self.lower) and math.isfinite(self.upper)):
            raise ValueError(f"lower/upper must be finite numbers, got {self.lower!r}/{self.upper!r} (there "
                             f"is no 'no bound' value: give a variable without a plausible limit a wide one)")
        if self.lower > self.upper:
            raise ValueError(f"lower {self.lower} is greater than upper {self.upper}")
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {self.aggregation!r}")
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if not isinstance(self.static, bool):
            raise ValueError(f"static must be true or false, got {self.static!r}")
        if self.kind == "static" and not self.static:
            raise ValueError("kind 'static' requires static=true")

    @property
    def is_series(self) -> bool:
        return self.kind != "static"


class Catalogue:
    """An ordered collection of :class:`Variable`; order fixes the model's channel order."""

    def __init__(self, variables: list[Variable], source: str = "catalogue"):
        names = [v.name for v in variables]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"{source} lists {dupes} more than once; each variable name must be unique")
        if not variables:
            raise ValueError(f"{source} lists no variables; a catalogue has a header line "
                             f"{','.join(COLUMNS)} and one line per variable")
        if not any(v.is_series for v in variables):
            raise ValueError(f"{source} lists no time-series variable (kind 'vital' or 'lab'), only statics "
                             f"{names}; the model reads time series, so every stay would be rejected")
        self.variables = list(variables)
        self._by_name = {v.name: v for v in variables}

    # -- construction -------------------------------------------------------------------------------
    @classmethod
    def default(cls) -> Catalogue:
        text = resources.files("clinical_lstm").joinpath("data/catalogue.csv").read_text()
        return cls.from_csv_text(text, source="the default catalogue")

    @classmethod
    def from_csv(cls, path: str | Path) -> Catalogue:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"catalogue file {path} does not exist")
        try:
            text = path.read_text(encoding="utf-8-sig")  # a spreadsheet's byte-order mark is not 'name'
        except UnicodeDecodeError as exc:
            bad = exc.object[exc.start:exc.start + 1]
            raise ValueError(f"catalogue file {path} is not UTF-8 text (byte {exc.start}: {bad!r}); "
                             f"a catalogue is a CSV with columns {list(COLUMNS)}") from None
        return cls.from_csv_text(text, source=str(path))

    @classmethod
    def from_csv_text(cls, text: str, source: str = "catalogue") -> Catalogue:
        reader = csv.DictReader(io.StringIO(text))
        missing = [c for c in COLUMNS[:-1] if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{source} lacks column(s) {missing}; expected columns {list(COLUMNS)}")
        variables = []
        for row in reader:
            where = f"{source} line {reader.line_num} ({(row.get('name') or '').strip()!r})"
            if None in row:  # DictReader files the fields beyond the header's under the key None
                n = len(reader.fieldnames)
                raise ValueError(f"{where}: {n + len(row[None])} fields but the header has {n}; quote a "
                                 f"value that holds a comma")
            short = [c for c in COLUMNS[:-1] if row[c] is None]
            if short:
                raise ValueError(f"{where}: too few fields, {short} missing; each line needs "
                                 f"{list(COLUMNS[:-1])}")
            try:
                lower, upper = float(row["lower"]), float(row["upper"])
            except ValueError:
                empty = "" in (row["lower"].strip(), row["upper"].strip())
                hint = "; an empty bound is not 'no bound': give a wide finite one" if empty else ""
                got = f"{row['lower']!r}/{row['upper']!r}"
                raise ValueError(f"{where}: lower/upper must be numbers, got {got}{hint}") from None
            static = STATIC_SPELLINGS.get(row["static"].strip().lower(), row["static"])
            try:
                variables.append(Variable(row["name"].strip(), row["unit"], lower, upper, row["aggregation"],
                                          row["kind"], static, row.get("description") or ""))
            except ValueError as exc:
                raise ValueError(f"{where}: {exc}") from None
        return cls(variables, source)

    # -- views ----------------------------------------------------------------------------------------
    def __contains__(self, name: str) -> bool:
        return name in self._by_name

    def __getitem__(self, name: str) -> Variable:
        return self._by_name[name]

    def __len__(self) -> int:
        return len(self.variables)

    @property
    def names(self) -> list[str]:
        return [v.name for v in self.variables]

    @property
    def series(self) -> list[str]:
        """Time-series variables, in channel order."""
        return [v.name for v in self.variables if v.is_series]

    @property
    def statics(self) -> list[str]:
        """Variables whose time-0 value is a static feature."""
        return [v.name for v in self.variables if v.static]

    def to_csv_text(self) -> str:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(COLUMNS)
        for v in self.variables:
            writer.writerow([v.name, v.unit, repr(v.lower), repr(v.upper), v.aggregation, v.kind,
                             "true" if v.static else "false", v.description])
        return out.getvalue()

    def digest(self) -> str:
        """SHA-256 of the canonical CSV text: lets a scorer check it uses the model's catalogue."""
        return hashlib.sha256(self.to_csv_text().encode()).hexdigest()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Catalogue) and self.variables == other.variables

    def __repr__(self) -> str:
        return f"Catalogue({len(self.series)} series, {len(self.statics)} statics)"


def resolve(catalogue: Catalogue | str | Path | None) -> Catalogue:
    """Accept a Catalogue, a CSV path, or None (the default catalogue)."""
    if catalogue is None:
        return Catalogue.default()
    if isinstance(catalogue, Catalogue):
        return catalogue
    return Catalogue.from_csv(catalogue)
