"""Score stays with a trained model: ``python pipelines/score.py --config pipelines/configs/score_sample.toml``."""

from __future__ import annotations

import json
import sys

from _job import read_job

from clinical_lstm.workflow import score


def main() -> int:
    job, _, _ = read_job(__doc__, ("model", "data", "out"))
    print(json.dumps(score(job["model"], job["data"], job["out"]), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
