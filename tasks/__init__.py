"""Prefect tasks: thin wrappers over ``core`` (load, calibrate, quantize, evaluate, analyze, save,
compile, accelerator_run). Filled in by the issue "Orchestration"; dependencies point one way:
flows -> tasks -> core."""
