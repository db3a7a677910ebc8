"""Stage 6, MLflow: the local store and the UI server, tracked runs, the model registry and its champion,
packaging a bundle as an MLflow pyfunc, and downloading registered bundles.

May import: ``evaluation`` and every stage below it, and the base modules.
"""
