"""Writes rows in shards, in parallel, resumably and atomically, then merges them and reports.

Shards go to ``<out>.parts/part-NNNNN.parquet``; each is written to a temporary name and renamed when complete, so
a killed run leaves only whole shards, and a rerun with the same inputs skips them. The final file appears under
its name only once fully written, next to ``<out>.report.json``: counts and every skipped sample with its reason.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from data_prep.samples import Skipped
from data_prep.schema import ROW

RowBuilder = Callable[[Any, int], dict[str, Any] | Skipped]


@dataclass
class Report:
    """What a build produced and what it left out."""

    output: str
    rows: int = 0
    skipped: list[dict[str, str]] = field(default_factory=list)
    resumed_shards: int = 0
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line of counts and notes, then one ``WARNING:`` line per warning."""
        reasons = Counter(entry["reason"].split(":")[0] for entry in self.skipped)
        details = ", ".join(f"{count} x {reason}" for reason, count in reasons.most_common()) or "none"
        notes = "".join(f"; {note}" for note in self.notes)
        warnings = "".join(f"\nWARNING: {warning}" for warning in self.warnings)
        return f"{self.output}: {self.rows} rows, {len(self.skipped)} skipped ({details}){notes}{warnings}"

    def save(self) -> Path:
        """Writes ``<output stem>.report.json`` next to the output."""
        out = Path(self.output)
        path = out.with_name(out.stem + ".report.json")
        atomic_write_text(json.dumps(self.__dict__, indent=1), path)
        return path


def atomic_write_table(table: pa.Table, path: Path) -> None:
    """Writes ``table`` so that ``path`` is either absent or complete."""
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    pq.write_table(table, temporary)
    os.replace(temporary, path)


def atomic_write_text(text: str, path: Path) -> None:
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    temporary.write_text(text)
    os.replace(temporary, path)


def _build_shard(builder: RowBuilder, items: Sequence[Any], start: int, path: Path) -> list[dict[str, str]]:
    rows, skipped = [], []
    for offset, item in enumerate(items):
        result = builder(item, start + offset)
        if isinstance(result, Skipped):
            skipped.append({"key": result.key, "reason": result.reason})
        else:
            rows.append(result)
    atomic_write_table(pa.Table.from_pylist(rows, schema=ROW), path)
    atomic_write_text(json.dumps(skipped), path.with_suffix(".skipped.json"))
    return skipped


def write_dataset(
    items: Sequence[Any],
    builder: RowBuilder,
    out: str | Path,
    fingerprint: dict[str, Any],
    pre_skipped: Sequence[Skipped] = (),
    shard_size: int = 256,
    workers: int = 1,
) -> Report:
    """Builds ``builder(item, index)`` for every item into ``out`` (parquet, :data:`data_prep.schema.ROW`).

    Args:
        items: Picklable inputs, one row each (or a :class:`Skipped`).
        builder: A picklable function (module level) building one row.
        out: The final parquet file.
        fingerprint: What determines the rows (command, inputs, options); shards of another fingerprint are never
            reused.
        pre_skipped: Samples the readers already left out, carried into the report.
        shard_size: Items per shard.
        workers: Worker processes (1 builds in this process).
    """
    out = Path(out)
    parts = out.with_name(out.name + ".parts")
    parts.mkdir(parents=True, exist_ok=True)
    manifest = parts / "fingerprint.json"
    signature = json.dumps(fingerprint, sort_keys=True, default=str)
    if manifest.exists() and manifest.read_text() != signature:
        raise ValueError(f"{parts} holds shards of another configuration; delete it or choose another --out")
    atomic_write_text(signature, manifest)
    shards = [(start, items[start : start + shard_size]) for start in range(0, len(items), shard_size)]
    paths = [parts / f"part-{number:05d}.parquet" for number in range(len(shards))]
    report = Report(str(out), skipped=[{"key": s.key, "reason": s.reason} for s in pre_skipped])
    todo = [(shard, path) for shard, path in zip(shards, paths, strict=True) if not path.exists()]
    report.resumed_shards = len(shards) - len(todo)
    with tqdm(total=len(items), desc=out.name, unit="sample") as progress:
        progress.update(sum(len(shard[1]) for shard, path in zip(shards, paths, strict=True) if path.exists()))
        if workers <= 1:
            for (start, chunk), path in todo:
                _build_shard(builder, chunk, start, path)
                progress.update(len(chunk))
        else:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                sizes = {
                    pool.submit(_build_shard, builder, chunk, start, path): len(chunk) for (start, chunk), path in todo
                }
                for future in as_completed(sizes):
                    future.result()
                    progress.update(sizes[future])
    tables = [pq.read_table(path, schema=ROW) for path in paths]
    for path in paths:
        report.skipped.extend(json.loads(path.with_suffix(".skipped.json").read_text()))
    table = pa.concat_tables(tables) if tables else ROW.empty_table()
    report.rows = table.num_rows
    atomic_write_table(table, out)
    report.save()
    shutil.rmtree(parts)
    return report
