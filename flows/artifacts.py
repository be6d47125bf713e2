"""Prefect artifacts of the flows: candidate tables, markdown summaries, the Pareto-front image."""
from __future__ import annotations

import base64
import json
import os

__all__ = ["pareto_plot", "candidate_table", "create_table", "create_markdown", "image_markdown", "artifact_key"]


def artifact_key(*parts: str) -> str:
    """Prefect artifact keys: lowercase letters, digits and dashes."""
    text = "-".join(parts).lower()
    return "".join(c if c.isalnum() else "-" for c in text).strip("-")[:60] or "mixq"


def pareto_plot(candidates: list[dict], front: list[dict], path: str, target: float | None = None,
                metric: str = "accuracy", title: str = "") -> str:
    """Accuracy vs number of INT16 nodes of every candidate, the front highlighted (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    pts = [(c["int16_nodes"], c["accuracy"]) for c in candidates if c.get("accuracy") is not None]
    if pts:
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=22, color="tab:gray", alpha=0.7, label="candidates")
    if front:
        f = sorted((c["int16_nodes"], c["accuracy"]) for c in front)
        ax.step([p[0] for p in f], [p[1] for p in f], where="post", color="tab:blue", lw=1.2)
        ax.scatter([p[0] for p in f], [p[1] for p in f], s=40, color="tab:blue", label="Pareto front", zorder=3)
    if target is not None:
        ax.axhline(target, color="tab:red", ls="--", lw=1, label=f"target {target:.4f}")
    ax.set_xlabel("INT16 nodes")
    ax.set_ylabel(metric)
    ax.set_title(title or f"{metric} vs INT16 nodes", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)
    return os.path.abspath(path)


def image_markdown(path: str, alt: str, max_bytes: int = 400_000) -> str:
    """Markdown showing a PNG inline (data URI; the Prefect UI renders it) plus its path."""
    with open(path, "rb") as f:
        data = f.read()
    text = f"`{path}`"
    if len(data) <= max_bytes:
        text = f"![{alt}](data:image/png;base64,{base64.b64encode(data).decode()})\n\n" + text
    return text


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4f}"
    if isinstance(v, (list, dict)):
        return json.dumps(v)
    return str(v)


def candidate_table(rows: list[dict], columns: list[str]) -> list[dict]:
    """Rows restricted to ``columns``, values formatted for display."""
    return [{c: _fmt(r.get(c)) for c in columns} for r in rows]


def create_table(rows: list[dict], key: str, description: str) -> str | None:
    from prefect.artifacts import create_table_artifact

    return str(create_table_artifact(table=rows, key=key, description=description))


def create_markdown(markdown: str, key: str, description: str) -> str | None:
    from prefect.artifacts import create_markdown_artifact

    return str(create_markdown_artifact(markdown=markdown, key=key, description=description))
