"""What every recipe and the evaluator share: the task (answer parsing, prompts, coordinates, overlays, metrics,
dataset rows, episodes, matching) and the verl runtime (launcher, trainer, registration, workarounds, preflight,
reward manager, run config), with tiny test models."""
