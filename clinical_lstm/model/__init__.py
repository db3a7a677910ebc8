"""Stage 3, the model: the masked LSTM (``network``), the summary members and the hour-dependent stacking head
(``head``, ``baselines``), calibration and the alert threshold (``calibrate``), and the estimator that cross-fits
them all (``training``).

May import: ``features``, ``data`` and the base modules.
"""
