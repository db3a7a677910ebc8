"""Small typed configs, loaded from TOML files whose sections mirror these dataclasses.

A config file only lists what it changes; everything else keeps the defaults below. Unknown sections or keys
are errors (a typo must never silently fall back to a default).
"""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path


@dataclass
class ModelConfig:
    hidden_size: int = 64  # LSTM hidden units
    num_layers: int = 1  # stacked LSTM layers
    dropout: float = 0.2  # on the hidden states before the heads
    decay: bool = True  # GRU-D style learned input decay toward the mean
    attention: bool = False  # attention pooling over steps instead of the last state

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TrainConfig:
    epochs: int = 40  # upper bound; early stopping usually ends sooner
    batch_size: int = 64
    lr: float = 2e-3  # AdamW learning rate
    weight_decay: float = 1e-2  # AdamW decoupled weight decay
    clip_norm: float = 1.0  # gradient clipping (global L2 norm)
    patience: int = 8  # epochs without validation AUPRC improvement before stopping
    target_replication: float = 0.5  # weight of the per-step loss (Lipton et al. 2016)
    pos_weight: str = "sqrt"  # class imbalance: "none", "sqrt" (sqrt(neg/pos)) or "balanced" (neg/pos)
    seed: int = 0
    n_models: int = 1  # seed ensemble size; members use seed, seed+1, ...
    device: str = "auto"  # "auto" picks CUDA when available, else CPU

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class DataConfig:
    window_hours: float = 48.0  # hours since admission covered by the grid
    resolution_hours: float = 1.0  # bin width in hours; must divide window_hours
    imputation: str = "ffill_median"  # "ffill_median", "median" or "zero"
    catalogue: str | None = None  # path to a custom catalogue CSV; None = the PhysioNet default


@dataclass
class CalibrationConfig:
    method: str = "platt"  # "platt" or "isotonic", fitted on the validation split
    threshold_rule: str = "min_se_ppv"  # "min_se_ppv" (PhysioNet event 1) or "youden"


@dataclass
class EvaluationConfig:
    val_fraction: float = 0.2  # of the training stays: early stopping + calibration
    test_fraction: float = 0.2  # held out for the report when no separate test data is given; 0 = none
    n_boot: int = 1000  # bootstrap replicates for the 95 % intervals
    split_seed: int = 0  # seed of the stratified splits
    explain_stays: int = 200  # evaluation stays explained for the global SHAP importance plot; 0 = none


@dataclass
class TrackingConfig:
    experiment: str = "clinical-lstm"  # MLflow experiment name
    registered_model: str = "clinical-lstm"  # MLflow registry name


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
        for name in sections:
            section_cls = type(getattr(cls(), name))
            values = d.get(name, {})
            known = {g.name: g for g in fields(section_cls)}
            bad = sorted(set(values) - set(known))
            if bad:
                raise ValueError(f"{source}: unknown key(s) {bad} in [{name}]; expected some of {sorted(known)}")
            for key, val in values.items():
                default = getattr(section_cls(), key)
                if default is not None and not isinstance(val, type(default)) and not (
                        isinstance(default, float) and isinstance(val, int) and not isinstance(val, bool)):
                    raise ValueError(f"{source}: [{name}] {key} must be {type(default).__name__}, got {val!r}")
            built[name] = section_cls(**values)
        return cls(**built)

    @classmethod
    def from_toml(cls, path: str | Path) -> Config:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} does not exist")
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"config file {path} is not valid TOML: {exc}") from None
        return cls.from_dict(data, source=str(path))

    def to_dict(self) -> dict:
        return asdict(self)

    def flat(self) -> dict[str, object]:
        """``{"model.hidden_size": 64, ...}``: the whole config as dotted keys (e.g. MLflow params)."""
        return {f"{s}.{k}": v for s, section in self.to_dict().items() for k, v in section.items()}


def load_config(path: str | Path | None) -> Config:
    return Config() if path is None else Config.from_toml(path)
