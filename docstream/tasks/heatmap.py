"""Heatmap PNGs of recall probes: needle depth (rows) by context length (columns).

Uses matplotlib (imported only when a heatmap is drawn) with its non-interactive Agg canvas, so no
display is needed.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

__all__ = ["METRICS", "format_tokens", "plot_heatmap"]

#: what a heatmap can show: cell-table column, label, and the fixed colour range (None: the data's)
METRICS: dict[str, tuple[str, str, tuple[float, float] | None]] = {
    "accuracy": ("accuracy", "exact-match accuracy", (0.0, 1.0)),
    "logprob": ("mean_logprob_per_token", "answer log-prob per token", None),
}


def format_tokens(n: int) -> str:
    """``512``, ``2K``, ``1.5K``, ``1M``: token counts in powers of 1024."""
    for unit, size in (("M", 1 << 20), ("K", 1 << 10)):
        if n >= size:
            value = n / size
            return f"{value:.0f}{unit}" if value == int(value) else f"{value:.3g}{unit}"
    return str(n)


def plot_heatmap(cells: Sequence[dict], path: str | Path, title: str, metric: str = "accuracy") -> Path:
    """Draw ``cells`` (rows with ``length``, ``depth`` and the metric's column) as a red-amber-green
    heatmap at ``path``; each square is annotated with its value and the mean first-token rank."""
    if metric not in METRICS:
        raise ValueError(f"unknown heatmap metric {metric!r}; choose one of {', '.join(map(repr, METRICS))}")
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError("drawing the heatmap needs matplotlib: pip install matplotlib") from err
    column, label, fixed = METRICS[metric]
    lengths = sorted({c["length"] for c in cells})
    depths = sorted({c["depth"] for c in cells})
    by_key = {(c["depth"], c["length"]): c for c in cells}
    grid = [[by_key[(d, n)][column] if (d, n) in by_key else math.nan for n in lengths] for d in depths]
    finite = [v for row in grid for v in row if not math.isnan(v)]
    vmin, vmax = fixed if fixed else (min(finite, default=0.0), max(finite, default=1.0))
    if vmin == vmax:
        vmin, vmax = vmin - 1.0, vmax + 1.0
    fig = Figure(figsize=(1.3 * len(lengths) + 3, 0.7 * len(depths) + 2.2), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(grid, cmap="RdYlGn", vmin=vmin, vmax=vmax, aspect="auto")
    ax.set_xticks(range(len(lengths)), [format_tokens(n) for n in lengths])
    ax.set_yticks(range(len(depths)), [f"{d:g}%" for d in depths])
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("needle depth")
    for i, d in enumerate(depths):
        for j, n in enumerate(lengths):
            cell = by_key.get((d, n))
            if cell is not None:
                ax.text(j, i, f"{cell[column]:.2f}\nrank {cell['mean_first_token_rank']:.0f}", ha="center",
                        va="center", fontsize=7)
    fig.colorbar(image, ax=ax, label=label)
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return out
