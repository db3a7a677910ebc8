"""Stage 5, evaluation: metrics with bootstrap intervals and paired differences (``metrics``), the
report's plots (``plots``) and the training/evaluation report (``report``).

May import: ``explain``, ``model``, ``features``, ``data`` and the base modules.
"""
