"""Talking to a devkit: a remote Linux board reached over SSH, and what runs there.

``core.devkit.transport`` holds :class:`DevkitSession` (connect with host-key checking, a fresh
remote work directory per session, checksum-verified uploads/downloads with retries, remote
commands with time limits, cleanup in all cases). paramiko is imported only when a session
connects, so ``import core`` (and this package) stays light.

``core.devkit.lm`` (the ``.lm`` package: :func:`write_lm`, :func:`read_lm`),
``core.devkit.planner`` (:class:`Target`, :class:`CompileReport`, :func:`plan_memory`) and
``core.devkit.runtime`` (``python -m core.devkit run``) need numpy and the standard library only.
All names below load lazily.
"""
from __future__ import annotations

__all__ = ["CommandResult", "DevkitSession", "RetryPolicy", "Target", "CompileReport", "MemoryPlan",
           "plan_memory", "write_lm", "read_lm"]

_MODULES = {
    "CommandResult": "transport", "DevkitSession": "transport", "RetryPolicy": "transport",
    "Target": "planner", "CompileReport": "planner", "MemoryPlan": "planner", "plan_memory": "planner",
    "write_lm": "lm", "read_lm": "lm",
}


def __getattr__(name: str):
    module = _MODULES.get(name)
    if module is not None:
        import importlib

        return getattr(importlib.import_module(f"core.devkit.{module}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
