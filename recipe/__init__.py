"""verl recipes: ``common`` (what every recipe and the evaluator share), ``samr1`` and ``veteran`` (the two papers),
``evaluate`` (evaluation, ``make infer`` and the demo), ``cpu`` (verl on a machine without an accelerator) and
``verl_plugin`` (what verl loads in every process)."""
