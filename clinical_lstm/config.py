"""Small typed configs, loaded from TOML files whose sections mirror these dataclasses.

A config file only lists what it changes; everything else keeps the defaults below. Every value is checked
when the config is built (in Python or from a file): an unknown section or key, a wrong type, a choice not on
the list, a number out of range, empty text (every text setting is a name or a path) or a grid of more than
``MAX_BINS`` bins per stay is a one-line ``ValueError`` before any data is read (the command line turns it
into exit code 2). A typo never falls back to a default.

One TOML dialect serves every entry point: the library sections below, plus an optional ``[job]`` section
with what the command works on (:class:`JobConfig`: data, output, model, ...) and, for sweeps, ``[sweep]``.
``clinical-lstm train --config FILE`` and ``python pipelines/train.py --config FILE`` read the same file the
same way (:func:`load`).
"""

from __future__ import annotations

import math
import os
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar


def usable_cpus() -> int:
    """The CPUs this process may run on: its affinity mask where the OS has one (Linux), else the CPU count."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


# -- constraints --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Range:
    """A number of ``kind`` in ``[low, high]`` (``None`` = unbounded; ``open_low`` excludes ``low``)."""

    kind: type
    low: float | None = None
    high: float | None = None
    open_low: bool = False

    def check(self, value) -> str | None:
        ok_type = isinstance(value, self.kind) and not isinstance(value, bool) or (
            self.kind is float and isinstance(value, int) and not isinstance(value, bool))
        if not ok_type:
            return f"must be {'an integer' if self.kind is int else 'a number'}"
        if isinstance(value, float) and not math.isfinite(value):
            return "must be finite"
        if self.low is not None and (value < self.low or (self.open_low and value == self.low)):
            return f"must be {'>' if self.open_low else '>='} {self.low:g}"
        if self.high is not None and value > self.high:
            return f"must be <= {self.high:g}"
        return None


@dataclass(frozen=True)
class Choice:
    options: tuple

    def check(self, value) -> str | None:
        return None if value in self.options else f"must be one of {self.options}"


@dataclass(frozen=True)
class Text:
    """Text, not empty or blank (a name or a path: ``""`` names nothing); also ``None`` if ``optional``."""

    optional: bool = False

    def check(self, value) -> str | None:
        if value is None and self.optional:
            return None
        if not isinstance(value, str):
            return "must be text" + (" or left out" if self.optional else "")
        return None if value.strip() else "must be non-empty text"


@dataclass(frozen=True)
class Kind:
    """A value of one of ``types`` (``None`` allowed when listed)."""

    types: tuple

    def check(self, value) -> str | None:
        if isinstance(value, bool) and bool not in self.types:
            return f"must be {' or '.join(t.__name__ for t in self.types)}"
        return None if isinstance(value, self.types) else f"must be {' or '.join(t.__name__ for t in self.types)}"


@dataclass(frozen=True)
class Hours:
    """A non-empty list of positive, finite hours (a TOML array of numbers)."""

    def check(self, value) -> str | None:
        if not isinstance(value, (list, tuple)) or not value:
            return "must be a non-empty list of hours"
        for h in value:
            if isinstance(h, bool) or not isinstance(h, (int, float)) or not math.isfinite(h) or h <= 0:
                return f"must hold positive, finite hours only (not {h!r})"
        return None


POSITIVE_INT, POSITIVE = Range(int, 1), Range(float, 0, open_low=True)
FRACTION, NON_NEGATIVE = Range(float, 0, 1), Range(float, 0)
BOOL, TEXT, OPTIONAL_TEXT = Kind((bool,)), Text(), Text(optional=True)  # no setting may be empty text

# The grid of one stay is (bins, series) and is held five times as float32: values and obs_time (the grid),
# x, mask and delta (the model's inputs). Both bounds catch a unit slip (minutes as hours) before any data
# are read, far above any real design (PhysioNet: 48 bins of 37 series, 35 KiB a stay):
MAX_BINS = 10_000  # window_hours / resolution_hours; 30 days at 5-minute bins is 8,640
MAX_STAY_MIB = 16  # bins * series * STAY_BYTES_PER_CELL; the default 37 series at MAX_BINS take 7.1 MiB, and
#                    a 1,000-stay prepare chunk of 16 MiB stays holds about 6 GiB of grid (values, obs_time)
STAY_BYTES_PER_CELL = 5 * 4


def grid_bins(window_hours: float, resolution_hours: float) -> int:
    """**The number of bins of a stay's grid**, ``window_hours / resolution_hours``, for every path (the config,
    :mod:`clinical_lstm.data.grid`, the transformer): both positive, the window a whole multiple of the resolution, and at
    most :data:`MAX_BINS`, so that a unit slip (minutes for hours) is an error before any data are read, not an
    allocation of terabytes after."""
    if not (resolution_hours > 0 and window_hours > 0):
        raise ValueError(f"window_hours and resolution_hours must be positive, got {window_hours} and "
                         f"{resolution_hours}")
    n = window_hours / resolution_hours
    if not n <= MAX_BINS:
        raise ValueError(f"window_hours / resolution_hours = {window_hours:g} / {resolution_hours:g} = {n:,.0f} "
                         f"bins per stay, more than the {MAX_BINS:,} allowed (30 days at 5-minute bins is 8,640); "
                         f"are both in hours?")
    if abs(n - round(n)) > 1e-9:
        raise ValueError(f"window_hours ({window_hours:g}) must be a whole multiple of resolution_hours "
                         f"({resolution_hours:g})")
    return int(round(n))


class Section:
    """A config section: checks every field against ``constraints`` when built (scikit-learn's
    ``_parameter_constraints`` idea), so a bad value fails at once with the section and key named."""

    section: ClassVar[str]
    constraints: ClassVar[dict[str, Any]]

    def __post_init__(self):
        for name, rule in self.constraints.items():
            problem = rule.check(getattr(self, name))
            if problem:
                raise ValueError(f"[{self.section}] {name} {problem}; got {getattr(self, name)!r}")

    def to_dict(self) -> dict:
        return asdict(self)


# -- sections -----------------------------------------------------------------------------------------------
@dataclass
class DataConfig(Section):
    window_hours: float = 48.0  # hours since admission covered by the grid
    resolution_hours: float = 1.0  # bin width in hours; must divide window_hours
    imputation: str = "ffill_median"  # "ffill_median", "median" or "zero"
    catalogue: str | None = None  # path to a custom catalogue CSV; None = the PhysioNet default

    section: ClassVar[str] = "data"
    constraints: ClassVar[dict] = {"window_hours": POSITIVE, "resolution_hours": POSITIVE,
                                   "imputation": Choice(("ffill_median", "median", "zero")),
                                   "catalogue": OPTIONAL_TEXT}

    def __post_init__(self):
        super().__post_init__()
        try:
            grid_bins(self.window_hours, self.resolution_hours)
        except ValueError as exc:
            raise ValueError(f"[data] {exc}") from None

    @property
    def n_bins(self) -> int:
        """Grid bins per stay: ``window_hours / resolution_hours``."""
        return grid_bins(self.window_hours, self.resolution_hours)

    def check_stay_size(self, n_series: int, catalogue: str = "the catalogue") -> None:
        """Refuse a grid whose one stay would exceed ``MAX_STAY_MIB``: call it once the catalogue is read
        (``n_series = len(catalogue.series)``), before any data are."""
        mib = self.n_bins * n_series * STAY_BYTES_PER_CELL / 2**20
        if mib > MAX_STAY_MIB:
            raise ValueError(f"[data] window_hours / resolution_hours = {self.n_bins:,} bins of the "
                             f"{n_series:,} time-series variables of {catalogue} take {mib:,.1f} MiB per "
                             f"stay, more than the {MAX_STAY_MIB} MiB allowed; use a coarser resolution_hours, "
                             f"a shorter window_hours or fewer variables")


@dataclass
class ModelConfig(Section):
    hidden_size: int = 64  # LSTM hidden units
    num_layers: int = 1  # stacked LSTM layers
    dropout: float = 0.2  # on the hidden states before the heads
    decay: bool = True  # GRU-D style learned input decay toward the mean
    attention: bool = False  # attention pooling over steps instead of the last state
    summaries: bool = True  # stack the networks with logistic regression and boosted trees on per-variable
    #                         summaries (clinical_lstm.features.summaries); false ships the masked LSTM alone
    end_members: bool = True  # also stack logistic regression and gradient boosting fitted on each stay's last-bin
    #                           summary only (end-of-stay specialists, weighed in late in a stay by the stacking)
    stack_knots: list = field(default_factory=lambda: [4.0, 12.0, 24.0, 48.0])  # hours at which the stacking
    #                         weights are fitted, linear in between, constant beyond (those inside the window)

    section: ClassVar[str] = "model"
    constraints: ClassVar[dict] = {"hidden_size": Range(int, 1, 4096), "num_layers": Range(int, 1, 8),
                                   "dropout": Range(float, 0, 0.95), "decay": BOOL, "attention": BOOL,
                                   "summaries": BOOL, "end_members": BOOL, "stack_knots": Hours()}


@dataclass
class TrainConfig(Section):
    folds: int = 5  # k of k-fold cross-fitting: k networks, each scored on its held-out fold
    epochs: int = 40  # upper bound; early stopping usually ends sooner
    batch_size: int = 64
    lr: float = 2e-3  # AdamW learning rate
    weight_decay: float = 1e-2  # AdamW decoupled weight decay
    clip_norm: float = 1.0  # gradient clipping (global L2 norm)
    patience: int = 8  # epochs without validation AUPRC improvement before stopping
    target_replication: float = 0.5  # weight of the per-step loss (Lipton et al. 2016)
    pos_weight: str = "sqrt"  # class imbalance: "none", "sqrt" (sqrt(neg/pos)) or "balanced" (neg/pos)
    seed: int = 0  # seeds the folds and the networks
    device: str = "auto"  # "auto" picks CUDA when available, else "cpu" or "cuda"
    in_memory_gb: float = 1.0  # model inputs up to this size are held in memory; larger ones are read from disk
    stop_fraction: float = 0.15  # of each network's training folds, set aside to early-stop on (its held-out fold
    #                              is never looked at before it is final)
    landmarks: list = field(default_factory=lambda: [4.0, 8.0, 12.0, 24.0, 36.0, 48.0])  # hours at which every
    #                              training stay is summarized for the summary members and the stacking (with the
    #                              report's hours and the stay's last bin)

    section: ClassVar[str] = "train"
    constraints: ClassVar[dict] = {
        "folds": Range(int, 2, 50), "epochs": POSITIVE_INT, "batch_size": POSITIVE_INT, "lr": POSITIVE,
        "weight_decay": NON_NEGATIVE, "clip_norm": POSITIVE, "patience": POSITIVE_INT,
        "target_replication": NON_NEGATIVE, "pos_weight": Choice(("none", "sqrt", "balanced")),
        "seed": Range(int, 0), "device": Choice(("auto", "cpu", "cuda")), "in_memory_gb": NON_NEGATIVE,
        "stop_fraction": Range(float, 0.05, 0.5), "landmarks": Hours()}


@dataclass
class CalibrationConfig(Section):
    method: str = "platt"  # "platt" or "isotonic", fitted on the out-of-fold logits
    threshold_rule: str = "min_se_ppv"  # "min_se_ppv" (PhysioNet event 1) or "youden"

    section: ClassVar[str] = "calibration"
    constraints: ClassVar[dict] = {"method": Choice(("platt", "isotonic")),
                                   "threshold_rule": Choice(("min_se_ppv", "youden"))}


@dataclass
class EvaluationConfig(Section):
    n_boot: int = 1000  # bootstrap replicates for the 95 % intervals
    seed: int = 0  # seed of the bootstrap
    explain_stays: int = 100  # evaluation stays explained for the global SHAP importance plot; 0 = none
    hours: list = field(default_factory=lambda: [6.0, 12.0, 24.0, 36.0, 48.0])  # the report's every-hour table:
    #                  each model's risk from the rows up to that hour, on the stays whose grid reaches it

    section: ClassVar[str] = "evaluation"
    constraints: ClassVar[dict] = {"n_boot": Range(int, 1, 100_000), "seed": Range(int, 0),
                                   "explain_stays": Range(int, 0), "hours": Hours()}


@dataclass
class TrackingConfig(Section):
    experiment: str = "clinical-lstm"  # MLflow experiment name
    registered_model: str = "clinical-lstm"  # MLflow registry name
    source_names: bool = False  # input file names in the run, report and bundle (a file name can identify a
    #                             patient: by default each input is a neutral label such as "long-format CSV")

    section: ClassVar[str] = "tracking"
    constraints: ClassVar[dict] = {"experiment": TEXT, "registered_model": TEXT, "source_names": BOOL}


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    @classmethod
    def from_dict(cls, d: dict, source: str = "config") -> Config:
        sections = {f.name: f for f in fields(cls)}
        unknown = sorted(set(d) - set(sections))
        if unknown:
            raise ValueError(f"{source}: unknown section(s) {unknown}; expected {sorted(sections)}")
        built = {}
        for name, f in sections.items():
            section_cls = f.default_factory
            values = d.get(name, {})
            if not isinstance(values, dict):
                raise ValueError(f"{source}: [{name}] must be a table of settings, got {values!r}")
            known = {g.name for g in fields(section_cls)}
            bad = sorted(set(values) - known)
            if bad:
                raise ValueError(f"{source}: unknown key(s) {bad} in [{name}]; expected some of {sorted(known)}")
            try:
                built[name] = section_cls(**values)
            except ValueError as exc:
                raise ValueError(f"{source}: {exc}") from None
        return cls(**built)

    def to_dict(self) -> dict:
        return asdict(self)

    def flat(self) -> dict[str, object]:
        """``{"model.hidden_size": 64, ...}``: the whole config as dotted keys (e.g. MLflow params)."""
        return {f"{s}.{k}": v for s, section in self.to_dict().items() for k, v in section.items()}

    def replace(self, overrides: dict[str, object], source: str = "overrides") -> Config:
        """A copy with dotted-key overrides (``{"model.hidden_size": 32}``), checked like a file."""
        d = self.to_dict()
        for key, value in overrides.items():
            section, _, name = key.partition(".")
            if section not in d or name not in d[section]:
                raise ValueError(f"{source}: unknown parameter {key!r}; use dotted names such as "
                                 f"'model.hidden_size' (see Config.flat())")
            d[section][name] = value
        return Config.from_dict(d, source)


# -- the [job] section --------------------------------------------------------------------------------------
@dataclass
class JobConfig(Section):
    """What a command works on; the command line's options fill the same fields and win over the file."""

    data: list = field(default_factory=list)  # data paths ("sample" = the bundled sample)
    out: str | None = None  # output: bundle directory (train), scores file (score), folder (prepare, ...)
    labels: str | None = None  # stay_id,label file (train, prepare, evaluate)
    outcomes: str | None = None  # a PhysioNet Outcomes-<x>.txt for a single data path
    test: list = field(default_factory=list)  # separate labelled test data (train)
    test_labels: str | None = None
    model: str | None = None  # bundle directory or MLflow URI (score, evaluate, explain, export)
    catalogue: str | None = None  # score: the catalogue the data follow ("default" or a CSV)
    chunk_stays: int | None = None  # score: stays per chunk (default 2000, or 100 with explain)
    workers: int | None = None  # score: chunks scored at once
    explain: int = 0  # score: top-K SHAP variables per stay
    restart: bool = False  # score: discard an unfinished earlier run
    tracking: bool = True  # train: log an MLflow run and register the model

    section: ClassVar[str] = "job"
    constraints: ClassVar[dict] = {
        "data": Kind((list,)), "out": OPTIONAL_TEXT, "labels": OPTIONAL_TEXT, "outcomes": OPTIONAL_TEXT,
        "test": Kind((list,)), "test_labels": OPTIONAL_TEXT, "model": OPTIONAL_TEXT, "catalogue": OPTIONAL_TEXT,
        "chunk_stays": Kind((int, type(None))), "workers": Kind((int, type(None))), "explain": Range(int, 0),
        "restart": BOOL, "tracking": BOOL}

    def __post_init__(self):
        super().__post_init__()
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"[job] workers must be >= 1; got {self.workers!r}")
        if self.chunk_stays is not None and self.chunk_stays < 1:
            raise ValueError(f"[job] chunk_stays must be >= 1; got {self.chunk_stays!r}")
        for name in ("data", "test"):
            bad = [p for p in getattr(self, name) if TEXT.check(p)]
            if bad:
                raise ValueError(f"[job] {name} must be a list of paths (non-empty text); got {bad[0]!r}")


def load(path: str | Path | None, job: dict | None = None) -> tuple[Config, JobConfig, dict]:
    """Read a config file: ``(Config, JobConfig, other sections)``; ``job`` (e.g. command-line options, None
    values ignored) overrides the file's ``[job]``. ``other`` holds sections an entry point reads itself
    (``sweep``); any other unknown section is an error."""
    doc: dict = {}
    source = "command line"
    if path is not None:
        path = Path(path)
        source = str(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} does not exist")
        try:
            doc = tomllib.loads(path.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"config file {path} is not valid TOML: {exc}") from None
    job_values = {**doc.pop("job", {}), **{k: v for k, v in (job or {}).items() if v is not None}}
    other = {k: doc.pop(k) for k in ("sweep",) if k in doc}
    cfg = Config.from_dict(doc, source)
    known = {f.name for f in fields(JobConfig)}
    bad = sorted(set(job_values) - known)
    if bad:
        raise ValueError(f"{source}: unknown key(s) {bad} in [job]; expected some of {sorted(known)}")
    try:
        return cfg, JobConfig(**job_values), other
    except ValueError as exc:
        raise ValueError(f"{source}: {exc}") from None
