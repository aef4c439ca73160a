"""Plots for the clustering report (matplotlib, Agg backend): 2-D embedding coloured by
institution and by cluster, and the cluster x institution heatmap."""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["plot_embedding", "plot_table"]


def _savefig(fig: object, path: Path) -> None:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")  # type: ignore[attr-defined]
    plt.close(fig)  # type: ignore[arg-type]
    tmp.replace(path)


def plot_embedding(
    z: np.ndarray, colourings: dict[str, np.ndarray], path: Path, method: str = "pca", seed: int = 0
) -> None:
    """Scatter the first two PCA (or t-SNE, perplexity <= 35) coordinates of ``z``, one panel per
    colouring (e.g. institution, cluster, scanner), its groups named in a legend (up to 12)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if method == "tsne" and z.shape[0] > 5:
        from sklearn.manifold import TSNE

        perplexity = float(min(35, (z.shape[0] - 1) / 3))
        xy = TSNE(n_components=2, perplexity=perplexity, random_state=seed).fit_transform(z)
    else:
        from sklearn.decomposition import PCA

        xy = PCA(n_components=2).fit_transform(z) if z.shape[1] > 2 else z[:, :2]
    fig, axes = plt.subplots(1, len(colourings), figsize=(5 * len(colourings), 4.5), squeeze=False)
    for ax, (name, labels) in zip(axes[0], colourings.items(), strict=True):
        names = sorted({str(v) for v in labels})
        idx = np.array([names.index(str(v)) for v in labels])
        if len(names) <= 12:  # one colour per group, named in a legend
            cmap = plt.get_cmap("tab20")
            for i, group in enumerate(names):
                at = idx == i
                ax.scatter(xy[at, 0], xy[at, 1], color=cmap(i % 20), s=10, label=group)
            ax.legend(title=name, fontsize=7, title_fontsize=7, loc="best", markerscale=1.5)
        else:
            ax.scatter(xy[:, 0], xy[:, 1], c=idx, cmap="tab20", s=10, vmin=0,
                       vmax=max(19, len(names)))  # fmt: skip
        ax.set_title(f"{method.upper()} coloured by {name} ({len(names)})")
        ax.set_xlabel(f"{method.upper()} component 1")
        ax.set_ylabel(f"{method.upper()} component 2")
        ax.set_xticks([])
        ax.set_yticks([])
    _savefig(fig, path)


def plot_table(
    counts: np.ndarray,
    rows: list[int],
    cols: list[str],
    path: Path,
    title: str,
    *,
    group: str = "group",
) -> None:
    """Heatmap of a cluster x ``group`` count table (e.g. scanner) with the counts written in the
    cells, both axes named and a colour scale of the number of cases."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(4, 0.45 * len(cols) + 2), max(3, 0.4 * len(rows) + 1.5)))
    image = ax.imshow(counts, cmap="Blues", aspect="auto", vmin=0)
    bar = fig.colorbar(image, ax=ax, fraction=0.05, pad=0.03)
    bar.set_label("cases", fontsize=8)
    bar.ax.tick_params(labelsize=7)
    ax.set_xticks(range(len(cols)), cols, rotation=90, fontsize=7)
    ax.set_yticks(range(len(rows)), [str(r) for r in rows], fontsize=7)
    ax.set_xlabel(group)
    ax.set_ylabel("cluster (fitted)")
    ax.set_title(title)
    top = float(np.max(counts)) if np.size(counts) else 0.0
    for (i, j), v in np.ndenumerate(counts):
        if v:
            ax.text(j, i, str(v), ha="center", va="center", fontsize=7,
                    color="white" if v > 0.6 * top else "black")  # fmt: skip
    _savefig(fig, path)
