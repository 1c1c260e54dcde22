"""Engine facade, task definitions, RunContext, the worker and its background loops."""
