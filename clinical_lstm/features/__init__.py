"""Stage 2, the features: imputation with masks and hours since each variable was last seen
(``impute``), the per-variable running summaries the summary members read (``summaries``), and the cohort of
gridded, imputed stays with their landmark snapshots (``cohort``).

May import: ``data`` and the base modules.
"""
