"""Hyper-parameter sweeps with Optuna: the search space, the study storage, worker processes and their
MLflow runs. It runs the training job, so it sits above ``workflow``.

May import: ``workflow`` and everything below it.
"""
