"""Small matplotlib figures logged as MLflow artifacts (Agg backend: no display needed)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def bar(labels, values, title: str, xlabel: str, ylabel: str):
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.bar([str(x) for x in labels], values, color="#4C72B0")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if len(labels) > 15:
        ax.set_xticks(ax.get_xticks()[:: max(1, len(labels) // 10)])
    fig.tight_layout()
    return fig


def close(fig) -> None:
    plt.close(fig)
