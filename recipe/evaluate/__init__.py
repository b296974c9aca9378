"""Evaluation of both recipes: gIoU/cIoU per dataset, per-step curves, timing and a visual report
(docs/evaluation.md)."""
