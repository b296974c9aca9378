"""Evaluation of both recipes: gIoU/cIoU per dataset, per-step curves, timing and a visual report
(docs/evaluation.md), and ``make infer`` and the demo page (docs/segment-one-image.md).

``config`` (every knob and its default), ``samples`` (parquet rows, streamed), ``modes`` (how a sample becomes an
episode), ``policies`` (vLLM and transformers), ``segmenter`` (SAM2 batched across samples), ``runner`` (batches and
Ray workers), ``records`` (per-sample JSONL, resumable), ``summary``, ``table`` and ``visual`` (what a run reports),
``checkpoints`` (every checkpoint of a training run), ``infer`` and ``demo`` (one image), ``smoke`` (``make
eval-smoke``)."""
