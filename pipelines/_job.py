"""Shared by the pipelines: split a pipeline config into its ``[job]`` section and the library Config."""

from __future__ import annotations

import argparse
import tomllib
from pathlib import Path

from clinical_lstm.config import Config
from clinical_lstm.sample import resolve_data


def read_job(description: str, required: tuple[str, ...]) -> tuple[dict, Config, Path]:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", required=True, help="TOML file with a [job] section")
    path = Path(parser.parse_args().config)
    doc = tomllib.loads(path.read_text())
    job = doc.pop("job", {})
    missing = [k for k in required if k not in job]
    if missing:
        parser.error(f"{path}: [job] needs {missing}")
    for key in ("data", "test"):
        if key in job:
            job[key] = [resolve_data(p) for p in job[key]]
    return job, Config.from_dict(doc, source=str(path)), path
