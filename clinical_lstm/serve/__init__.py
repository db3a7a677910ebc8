"""Stage 7, serving a trained model: the bundle (``RiskModel``: save, load, predict, explain, trajectory),
batch scoring of folders and archives, the per-stay stream, Spark, ONNX export and the MLflow pyfunc wrapper.

May import: ``tracking`` and every stage below it, and the base modules.
"""
