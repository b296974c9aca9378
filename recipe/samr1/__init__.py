"""SAM-R1: single-turn reasoning segmentation with SAM2 in the reward loop (Huang et al., NeurIPS 2025)."""
