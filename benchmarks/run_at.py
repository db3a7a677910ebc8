"""python benchmarks/run_at.py ROOT SCRIPT [ARGS...]: run a benchmark SCRIPT with ``clinical_lstm`` imported from the
checkout or worktree ROOT instead of the installed (editable) package — to time two versions side by side, e.g.
``git worktree add /tmp/old COMMIT`` then alternate ``run_at.py /tmp/old ...`` and ``run_at.py . ...``.
SCRIPT ``clinical-lstm`` runs that version's command line (``run_at.py /tmp/old clinical-lstm score ...``)."""

import runpy
import sys
from pathlib import Path

root = str(Path(sys.argv.pop(1)).resolve())
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()
                    and "editable" not in type(f).__module__.lower()]  # the venv's editable finder
sys.path.insert(0, root)
import clinical_lstm  # noqa: E402

if not clinical_lstm.__file__.startswith(root):
    sys.exit(f"run_at: clinical_lstm came from {clinical_lstm.__file__}, not {root}")
sys.argv = sys.argv[1:]
if sys.argv[0] == "clinical-lstm":
    from clinical_lstm.cli import main  # noqa: E402

    sys.exit(main(sys.argv[1:]))
runpy.run_path(sys.argv[0], run_name="__main__")
