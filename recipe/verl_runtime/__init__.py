"""Where the project meets verl and Ray: the launcher that runs preflight and verl's ``run_ppo``, the trainer, the
reward manager, registration into verl's registries, the workarounds of verl internals, the ``samrl`` config block and
its composition, the per-process SAM2 pool client, checkpoint reading, the CPU platform's switch, and what the trainer
logs and draws (the pool meter, the rollout check, the gallery)."""
