"""Train a model from a pipeline config: ``python pipelines/train.py --config pipelines/configs/sample.toml``."""

from __future__ import annotations

import sys

from _job import read_job

from clinical_lstm.workflow import train


def main() -> int:
    job, cfg, _ = read_job(__doc__, ("data", "out"))
    res = train(job["data"], job["out"], job.get("labels"), config=cfg, test_data=job.get("test"),
                progress=sys.stderr.isatty())
    print(res.report)
    print(res.comparison())
    print(f"model bundle: {res.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
