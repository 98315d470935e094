"""Training curves: each trial's training loss, validation accuracy and validation Spearman per epoch.

``training.fit`` with a work directory writes them, on process 0, as TensorBoard event files, one folder per
trial (``W/tensorboard/trial_00``, ...; open them with ``tensorboard --logdir W``), and draws them into
``W/curves.png`` when it ends. The event files are written with tensorboardX, which needs neither
TensorFlow nor PyTorch; its files are the ones TensorBoard reads.
"""
from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from popjax import files

SCALARS = {"train_loss": "train/loss", "val_accuracy": "val/accuracy", "val_spearman": "val/spearman"}


def trial_name(t: int) -> str:
    return f"trial_{t:02d}"


class TrialCurves:
    """``fit``'s per-epoch records as TensorBoard scalars: one event-file folder per trial under
    ``directory``, each scalar at step = epoch. ``trials``: each trial's hyperparameters (written once, as
    text, so a folder says which trial it is)."""

    def __init__(self, directory, trials: Sequence[Mapping]):
        from tensorboardX import SummaryWriter

        self.directory = Path(directory)
        self.writers = [SummaryWriter(str(self.directory / trial_name(t)), flush_secs=30)
                        for t in range(len(trials))]
        for writer, trial in zip(self.writers, trials):
            writer.add_text("trial", json.dumps(files.jsonable(dict(trial)), sort_keys=True), 0)

    def __call__(self, record: Mapping) -> None:
        for key, tag in SCALARS.items():
            for writer, value in zip(self.writers, record[key]):
                if value is not None and not math.isnan(value):
                    writer.add_scalar(tag, float(value), int(record["epoch"]))

    def close(self) -> None:
        for writer in self.writers:
            writer.close()


def plot(history: Sequence[Mapping], path, title: str = "") -> Path:
    """Loss, validation accuracy and validation Spearman against the epoch, one line per trial, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4), constrained_layout=True)
    epochs = [r["epoch"] for r in history]
    for ax, (key, tag) in zip(axes, SCALARS.items()):
        values = np.array([[np.nan if v is None else v for v in r[key]] for r in history], np.float64)
        for t in range(values.shape[1] if values.ndim == 2 else 0):
            ax.plot(epochs, values[:, t], marker="o", markersize=3, linewidth=1.2, label=trial_name(t))
        ax.set_xlabel("epoch")
        ax.set_title(tag)
        ax.grid(alpha=0.3)
    if history and len(history[0]["train_loss"]) <= 8:
        axes[-1].legend(fontsize=7, loc="best")
    if title:
        fig.suptitle(title, fontsize=9)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return files.write_bytes(path, buf.getvalue())
