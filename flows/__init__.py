"""Prefect flows composed from ``tasks`` (quantize_flow, search_flow); see the issue "Orchestration"."""
