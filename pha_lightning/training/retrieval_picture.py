"""Retrieval vectors and prototypes as files: the vectors (safetensors), their labels (JSON) and a
2-D picture (PNG). Written by ``pha retrieve --output_dir`` and, when a run logs to something
other than TensorBoard (whose projector shows them), by the :class:`RetrievalProjector` callback."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor

from pha_lightning.files import atomic_replacement, atomic_write_text, reported_write


def plot(z: Tensor, labels: list[str], prototypes: Tensor, prototype_names: list[str], path: Path) -> None:
    """Project normalised vectors and prototypes on the first two principal axes of the examples.

    Examples of tasks with a prototype are dots, those of new tasks triangles; prototypes are stars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    z_hat = torch.nn.functional.normalize(z, dim=-1)
    k_hat = torch.nn.functional.normalize(prototypes, dim=-1)
    mean = z_hat.mean(0, keepdim=True)
    _, _, v = torch.linalg.svd(z_hat - mean, full_matrices=False)
    axes = v[:2].T
    points, marks = (z_hat - mean) @ axes, (k_hat - mean) @ axes
    fig, ax = plt.subplots(figsize=(7, 6))
    names = sorted(set(labels), key=labels.index)
    palette = plt.cm.tab10 if len(names) <= 10 else plt.cm.tab20
    colours = {name: palette(i % palette.N) for i, name in enumerate(names)}
    for name in names:
        rows = [i for i, label in enumerate(labels) if label == name]
        new = name not in prototype_names
        ax.scatter(
            points[rows, 0],
            points[rows, 1],
            s=14 if new else 10,
            alpha=0.6,
            color=colours[name],
            marker="^" if new else "o",
            label=f"{name} (new)" if new else name,
        )
    for (x, y), name in zip(marks.tolist(), prototype_names):
        ax.scatter([x], [y], marker="*", s=250, edgecolor="black", color=colours.get(name, "white"), zorder=3)
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(6, 6), fontsize=8)
    ax.set_title("Retrieval vectors and prototypes (stars), first two principal axes", fontsize=10)
    ax.legend(fontsize=7, markerscale=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def save_retrieval(
    stem: Path,
    z: Tensor,
    labels: list[str],
    prototypes: Tensor,
    prototype_names: list[str],
    extra: dict[str, Any] | None = None,
) -> list[Path]:
    """``<stem>.safetensors`` (``z``, ``prototypes``), ``<stem>.json`` (each row's label, the
    prototypes' tasks, ``extra``) and ``<stem>.png`` (:func:`plot`); the paths written."""
    paths = [stem.with_name(stem.name + suffix) for suffix in (".safetensors", ".json", ".png")]
    with reported_write(stem.parent, "retrieval output"):
        stem.parent.mkdir(parents=True, exist_ok=True)
        with atomic_replacement(paths[0]) as temporary:
            save_file({"z": z.contiguous(), "prototypes": prototypes.contiguous()}, str(temporary))
        record = {"labels": labels, "prototype_tasks": prototype_names, **(extra or {})}
        atomic_write_text(paths[1], json.dumps(record, indent=2), "retrieval output")
        with atomic_replacement(paths[2]) as temporary:
            plot(z, labels, prototypes, prototype_names, temporary)
    return paths
