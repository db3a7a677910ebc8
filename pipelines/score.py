"""Score stays with a trained model from a config file: the ``clinical-lstm score`` job (the nightly batch).

    python pipelines/score.py --config pipelines/configs/score_sample.toml [any other score option]

``[job]`` names the model (run folder, bundle directory or ``models:/clinical-lstm@champion``), the data and
the output file, and optionally ``explain``, ``chunk_stays``, ``workers``, ``catalogue`` and ``restart``. A killed
job re-run with the same config resumes; exit code 2 means the input contract failed before any work.
"""

import sys

from clinical_lstm.cli import main

if __name__ == "__main__":
    sys.exit(main(["score", *sys.argv[1:]]))
