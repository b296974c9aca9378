"""SAM-Veteran: a multi-task, multi-turn SAM2 agent for reasoning segmentation (ICLR 2026 submission)."""
