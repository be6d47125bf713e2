"""Talking to a devkit: a remote Linux board reached over SSH.

``core.devkit.transport`` holds :class:`DevkitSession` (connect with host-key checking, a fresh
remote work directory per session, checksum-verified uploads/downloads with retries, remote
commands with time limits, cleanup in all cases). paramiko is imported only when a session
connects, so ``import core`` (and this package) stays light.
"""
from __future__ import annotations

__all__ = ["CommandResult", "DevkitSession", "RetryPolicy"]


def __getattr__(name: str):
    if name in __all__:
        from core.devkit import transport

        return getattr(transport, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
