"""What every recipe and the evaluator share: answer parsing, prompts, overlays, metrics, tiny test models."""
