"""verl recipes: ``task`` (the reasoning-segmentation task every recipe and the evaluator share, free of verl),
``verl_runtime`` (where the project meets verl and Ray), ``samr1`` and ``veteran`` (the two papers), ``evaluate``
(evaluation, ``make infer`` and the demo), ``cpu`` (verl on a machine without an accelerator), ``tiny_vlm`` (tiny
random VLMs for the CPU run, the GPU check and the tests), ``smoke`` (``make smoke``) and ``verl_plugin`` (what verl
loads in every process)."""
