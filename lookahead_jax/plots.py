"""Plots of a run's records: the learning curves (test accuracy against labeled-set size).

Drawn on a bare ``matplotlib.figure.Figure`` (no pyplot: the user's backend is left
alone) and written atomically (:func:`lookahead_jax.records.atomic_write_bytes`).
"""

from __future__ import annotations

import io
from typing import Sequence

from matplotlib.figure import Figure  # no pyplot: leaves the user's backend alone

from lookahead_jax.records import atomic_write_bytes


def plot_learning_curves(curves: dict[str, tuple[Sequence[int], Sequence[float]]],
                         path: str, title: str = "") -> str:
    """Test accuracy against labeled-set size, one line per run; saves a PNG.

    Args:
      curves: ``{label: (num_labeled, accuracy)}``; ``None`` accuracies (a pool without
        an evaluation split) are not drawn.
      path: output PNG path (written atomically).
    """
    fig = Figure(figsize=(6, 4), dpi=110)
    ax = fig.subplots()
    drawn = 0
    for label, (n, acc) in curves.items():
        pts = [(a, b) for a, b in zip(n, acc) if b is not None]
        if pts:
            ax.plot([a for a, _ in pts], [100 * b for _, b in pts], marker="o", ms=3,
                    label=label)
            drawn += 1
    ax.set_xlabel("labeled examples")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title)
    if not drawn:
        ax.text(0.5, 0.5, "no evaluation split: no test accuracy", ha="center",
                va="center", transform=ax.transAxes)
    elif len(curves) > 1 or any(curves):
        ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(path, buf.getvalue())
    return path
