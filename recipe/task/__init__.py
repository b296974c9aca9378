"""The reasoning-segmentation task, free of verl and Ray: what a dataset row holds (``dataset_rows``, ``labels``,
``stored_logits``), what the model is asked and shown (``prompts``, ``overlay``, ``coordinates``), how its answer is
read and matched (``answer``, ``matching``), how an episode runs turn by turn (``episodes``, ``sam_steps``), how it is
scored (``metrics``) and drawn (``panels``). Both recipes, the evaluator and data_prep build on it."""
