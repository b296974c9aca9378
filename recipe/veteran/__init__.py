"""SAM-Veteran: a multi-task, multi-turn SAM2 agent for reasoning segmentation (ICLR 2026 submission).

The paper's rules as pure functions: ``reward_formulas`` (Tables 1, 2 and A.5) and ``sampling`` (Algorithms 1 and 2).
Their adapters to verl: ``task_scoring`` (a response of each task parsed, sent to SAM2 and scored), ``agent_loops``
(one verl agent loop per task), ``workflow_loop`` (the multi-turn workflow of :mod:`recipe.task.episodes` as an
on-policy loop), ``dynamic_sampling`` (the algorithms in verl's agent-loop worker) and ``advantage`` (the
batch-normalised advantage ``grpo_batch_std``). ``config`` holds the ``veteran`` block, ``main`` the entry point of
``make train-veteran``."""
