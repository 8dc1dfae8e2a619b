"""The run's curves as one PNG (matplotlib, Agg: no display needed)."""

from __future__ import annotations

from pathlib import Path

from mdpo_train.metrics import read_jsonl

PANELS = (  # (title, metric name or prefix: "loss" covers loss and loss/<term>)
    ("loss and its terms", "loss"),
    ("rewards", "rewards"),
    ("margins", "margins"),
    ("reward accuracies", "accuracy"),
    ("policy log-probs", "logps"),
    ("learning rate", "lr"),
)


def plot_metrics(jsonl: str | Path, png: str | Path) -> Path | None:
    """Train curves as lines, eval points as markers; None when there is nothing to plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_jsonl(jsonl) if Path(jsonl).exists() else []
    if not records:
        return None
    fig, axes = plt.subplots(2, 3, figsize=(15, 8))
    for ax, (title, prefix) in zip(axes.flat, PANELS):
        names = sorted({k for r in records for k in r if k == prefix or k.startswith(prefix + "/")})
        for split, style in (("train", "-"), ("eval", "o--")):
            rows = [r for r in records if r.get("split") == split]
            for name in names:
                points = [(r["step"], r[name]) for r in rows if name in r]
                if points:
                    xs, ys = zip(*points)
                    ax.plot(xs, ys, style, label=f"{split} {name}", markersize=4)
        ax.set_title(title)
        ax.set_xlabel("optimizer step")
        if ax.lines:
            ax.legend(fontsize=7)
    fig.tight_layout()
    import io

    from mdpo_data.format.folder import write_owned

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    png = Path(png)
    return write_owned(png.parent, png, buffer.getvalue())  # never through a symlink
