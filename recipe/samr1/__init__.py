"""SAM-R1: single-turn reasoning segmentation with SAM2 in the reward loop (Huang et al., NeurIPS 2025).

``reward`` (the tiered IoU reward and the format rewards of one response, SAM2 called through the pool), ``loss``
(GRPO's objective with asymmetric clipping and token-level averaging, the paper's eq. 4, registered as verl's policy
loss ``samr1``) and ``main`` (the entry point of ``make train-samr1``)."""
