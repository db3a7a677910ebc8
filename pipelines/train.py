"""Train a model from a config file: the ``clinical-lstm train`` job, same defaults, errors and tracking.

    python pipelines/train.py --config pipelines/configs/sample.toml [--no-tracking] [any other train option]
"""

import sys

from clinical_lstm.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
