"""Data preparation: the standard downloads (RefCOCO/+/g, ReasonSeg, gRefCOCO) and your own JSONL or CSV files to
verl parquet rows, SAM-Veteran's derived task sets, and synthetic datasets in the real formats for tests and smoke runs
(``python -m data_prep``; docs/data.md)."""
