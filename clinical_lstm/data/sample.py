"""The bundled sample: 500 real PhysioNet 2012 stays (set A) with outcomes, shipped inside the package."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

SAMPLE_NAME = "sample"


def bundled_sample() -> Path:
    """Path of the bundled ``set-a500.tar.gz`` (its ``Outcomes-a500.txt`` lies beside it)."""
    return Path(str(resources.files("clinical_lstm").joinpath("data/sample/set-a500.tar.gz")))


def resolve_data(value: str) -> Path:
    """``--data sample`` means the bundled sample, unless a file or folder of that name exists."""
    path = Path(value)
    if value == SAMPLE_NAME and not path.exists():
        return bundled_sample()
    return path
