"""The visual report: an HTML page of PNG panels showing what the model did, step by step.

Per sample, one panel: the image with the ground truth, then one image per step with SAM2's mask, the prompt's box
and clicks and the ground truth's outline, titled with the step's IoU. The page shows the worst samples (the papers'
failure analysis) and a seeded random draw, each with the question and the model's full answers, under the table.
"""

from __future__ import annotations

import html
import random
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from recipe.evaluate.config import EvalConfig
from recipe.evaluate.samples import EvalSample, iter_samples
from recipe.task.panels import LEGEND, draw_step, draw_truth, fit, tile_row, titled

REPORT_DIR = "report"


def _iou_text(iou: float | None) -> str:
    """A score in percent; None is a mask the metrics convention does not score (Seg-Zero's empty union)."""
    return "not scored" if iou is None else f"{100 * iou:.1f}"


def _step_title(index: int, step: dict[str, Any], last_of_stopped: bool) -> str:
    name = "box" if index == 0 else f"step {index}"
    if "iou" in step:
        return f"{name}: IoU {_iou_text(step['iou'])}"
    if step.get("sam_error"):
        return f"{name}: SAM2 error"
    return f"{name}: stop" if last_of_stopped else f"{name}: no valid answer"


def render_panel(sample: EvalSample, record: dict[str, Any], max_side: int = 448) -> Image.Image:
    """The sample's panel: ground truth first, then each step's mask, box, clicks and the GT outline."""
    target = sample.labels == 1
    tiles = [titled(fit(draw_truth(sample.image, target, sample.labels == 255), max_side), "ground truth")]
    steps = record["steps"]
    for index, step in enumerate(steps):
        picture = draw_step(sample.image, step, outline=target)
        stopped = record["termination"] == "stop" and index == len(steps) - 1
        tiles.append(titled(fit(picture, max_side), _step_title(index, step, stopped)))
    return tile_row(tiles)


def choose_samples(
    records: Sequence[dict[str, Any]], random_count: int, worst_count: int, seed: int
) -> dict[str, list]:
    """The worst scored samples (lowest final IoU, failures first) and a seeded random draw of the rest."""
    scored = [r for r in records if "skipped" not in r]
    ranked = [r for r in scored if r["iou"] is not None]
    worst = sorted(ranked, key=lambda r: (r["iou"], r["uid"]))[:worst_count]
    taken = {r["uid"] for r in worst}
    rest = [r for r in scored if r["uid"] not in taken]
    drawn = random.Random(seed).sample(rest, min(random_count, len(rest)))
    return {"Worst samples": worst, "Random samples": sorted(drawn, key=lambda r: r["uid"])}


def _panel_name(uid: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", uid) + ".png"


def _markdown_to_html(table: str) -> str:
    """The markdown tables of ``table.md`` as HTML tables (bullet notes as a list)."""
    parts, rows, notes = [], [], []

    def close_table() -> None:
        if rows:
            head, *body = rows
            cells = "".join(f"<th>{html.escape(c)}</th>" for c in head)
            lines = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in body)
            parts.append(f"<table><thead><tr>{cells}</tr></thead><tbody>{lines}</tbody></table>")
            rows.clear()

    for line in table.splitlines():
        if set(line) <= set("|-") and line:
            continue  # the header separator
        if line.startswith("|"):
            rows.append([cell.strip() for cell in line.strip("|").split("|")])
            continue
        close_table()
        if line.startswith("- "):
            notes.append(f"<li>{html.escape(line[2:])}</li>")
    close_table()
    return "\n".join(parts) + (f"<ul>{''.join(notes)}</ul>" if notes else "")


def _sample_html(record: dict[str, Any], panel: str) -> str:
    answers = "".join(
        f"<p><b>{'box' if i == 0 else f'step {i}'}</b></p><pre>{html.escape(step['response'] or '(no model)')}</pre>"
        for i, step in enumerate(record["steps"])
    )
    return (
        f'<div class="sample"><h3>{html.escape(record["uid"])} · {html.escape(record["dataset"])} · '
        f"IoU {_iou_text(record['iou'])} · {html.escape(str(record['termination']))}</h3>"
        f'<p class="q">{html.escape(record["question"])}</p>'
        f'<img src="panels/{panel}" alt="{html.escape(record["uid"])}">'
        f"<details><summary>answers</summary>{answers}</details></div>"
    )


STYLE = (
    "body{font-family:sans-serif;margin:24px;color:#222}table{border-collapse:collapse;margin:8px 0}"
    "td,th{border:1px solid #bbb;padding:3px 8px;text-align:right}th{background:#eee}"
    ".sample{margin:18px 0;border-top:1px solid #ddd}.q{font-style:italic}img{max-width:100%}"
    "pre{white-space:pre-wrap;background:#f6f6f6;padding:6px}"
)


def write_report(
    cfg: EvalConfig, files: Sequence[Path], records: Sequence[dict[str, Any]], summary: dict[str, Any], table: str
) -> Path:
    """Writes ``<output_dir>/report/index.html`` and its panels; returns the page's path."""
    report_dir = Path(cfg.output_dir) / REPORT_DIR
    (report_dir / "panels").mkdir(parents=True, exist_ok=True)
    sections = choose_samples(records, cfg.visual.random_samples, cfg.visual.worst_samples, cfg.visual.seed)
    by_uid = {r["uid"]: r for rows in sections.values() for r in rows}
    for sample in iter_samples(files, by_uid.__contains__, cfg.data.limit):
        if isinstance(sample, EvalSample):
            render_panel(sample, by_uid[sample.uid], cfg.visual.max_side).save(
                report_dir / "panels" / _panel_name(sample.uid)
            )
    body = [f"<h1>{html.escape(summary['method'])}</h1>", _markdown_to_html(table)]
    legend = f"{LEGEND} Coordinates are the model's, mapped to the original image."
    body.append(f"<p>{html.escape(legend)}</p>")
    for title, rows in sections.items():
        body.append(f"<h2>{title} ({len(rows)})</h2>")
        body += [_sample_html(r, _panel_name(r["uid"])) for r in rows]
    page = (
        f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{html.escape(summary["method"])}</title>'
        f"<style>{STYLE}</style></head><body>{''.join(body)}</body></html>"
    )
    index = report_dir / "index.html"
    index.write_text(page, encoding="utf-8")
    return index
