"""Prefect tasks: thin wrappers over ``core`` (load, calibrate, quantize, evaluate, analyze, register,
compile, accelerator_run, and the two searches). They pass file paths and JSON-friendly dicts,
never arrays; dependencies point one way: flows -> tasks -> core. MLflow helpers live in
:mod:`tasks.tracking`, JSON data/config specs in :mod:`tasks.data`."""
from tasks.steps import (  # noqa: F401
    accelerator_run_task,
    analyze_task,
    calibrate_cached,
    calibrate_task,
    compile_task,
    evaluate_task,
    load_model_task,
    quantize_task,
    register_task,
)

__all__ = ["accelerator_run_task", "analyze_task", "calibrate_cached", "calibrate_task", "compile_task",
           "evaluate_task", "load_model_task", "quantize_task", "register_task"]
