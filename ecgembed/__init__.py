"""ecgembed: embed 12-lead ECG archives with MELP and ECGFM-KED, into SQL-ready Parquet."""

__version__ = "0.1.0"
