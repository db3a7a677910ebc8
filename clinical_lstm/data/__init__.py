"""Stage 1, the data: reading stays (PhysioNet set folders and archives, long CSV/Parquet tables), the
catalogue of variables, validation and the quality report, the time grid, chunked reading of large inputs, the
bundled sample and synthetic cohorts. The package's data files (``catalogue.csv``, ``profile.csv``, ``sample/``)
live here too.

May import: the top-level base modules (``config``, ``files``, ``progress``, ``checks``) and nothing above.
"""
