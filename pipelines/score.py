"""Score stays with a trained model: ``python pipelines/score.py --config pipelines/configs/score_sample.toml``.

The nightly batch job. ``[job]`` names the model (bundle directory or ``models:/clinical-lstm@champion``), the
data paths and the output file; optional keys: ``explain`` (top-K SHAP variables per stay), ``chunk_stays``,
``workers``, ``catalogue`` (``"default"`` or a CSV: the catalogue the hospital's extract follows; a model
trained on another is refused) and ``restart``. A killed job re-run with the same config resumes; exit code 2
means the input contract failed before any work (see ``clinical_lstm.batch``).
"""

from __future__ import annotations

import json
import sys

from _job import read_job

from clinical_lstm.sources import DataError
from clinical_lstm.workflow import score

OPTIONS = ("explain", "chunk_stays", "workers", "catalogue", "restart")


def main() -> int:
    job, _, path = read_job(__doc__, ("model", "data", "out"))
    unknown = sorted(set(job) - {"model", "data", "out", *OPTIONS})
    if unknown:
        print(f"{path}: unknown [job] key(s) {unknown}; allowed: model, data, out, {', '.join(OPTIONS)}",
              file=sys.stderr)
        return 2
    try:
        summary = score(job["model"], job["data"], job["out"], progress=True,
                        **{k: job[k] for k in OPTIONS if k in job})
    except DataError as exc:
        print(f"score: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
