"""Data preparation: RefCOCO/+/g and ReasonSeg to verl parquet (filled in by the data-preparation issue)."""
