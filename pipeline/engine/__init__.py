"""The scene engine: plan a run, run its blocks (model cache, batched forward, blending), finalize
the products. Flows call plan_run / run_block / finalize_run; the CLI calls detect."""
