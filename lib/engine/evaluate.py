"""Evaluation: predictions over a split, metrics, and the artefacts of evaluate_action.py
(metrics.json, per_class.csv, confusion.png, predictions.npz)."""
import csv
import json
import logging
import signal
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from lib.config import Config, config_to_dict
from lib.data.dataset import ActionDataset
from lib.data.labels import class_names
from lib.data.pyskl import load_store
from lib.engine.checkpoint import load_model_weights
from lib.engine.runtime import pick_device, setup_logging
from lib.model.action import build_model

log = logging.getLogger(__name__)


def ignore_interrupts(worker_id: int):
    """DataLoader workers leave Ctrl-C to the main process, which saves and stops cleanly."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def eval_loader(dataset: ActionDataset, batch_size: int, num_workers: int, device: torch.device):
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                                       pin_memory=device.type == "cuda", worker_init_fn=ignore_interrupts)


@torch.no_grad()
def predict(model, loader, device, max_batches: int = None, desc: str = "eval") -> tuple[torch.Tensor, torch.Tensor]:
    """Logits [S, K] (float32, CPU) and labels [S] over the loader, in loader order."""
    model.eval()
    all_logits, all_labels = [], []
    for i, (x, y) in enumerate(tqdm(loader, desc=desc, leave=False, dynamic_ncols=True)):
        if max_batches is not None and i >= max_batches:
            break
        all_logits.append(model(x.to(device, non_blocking=True)).float().cpu())
        all_labels.append(y)
    return torch.cat(all_logits), torch.cat(all_labels)


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, k: int) -> int:
    """How many labels are among the k highest logits of their row."""
    k = min(k, logits.shape[1])
    return int((logits.topk(k, dim=1).indices == labels[:, None]).any(dim=1).sum())


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict:
    """Top-1 / top-5 accuracy and mean per-class accuracy (over the classes present) in percent,
    mean cross-entropy loss, and the sample count."""
    count = len(labels)
    predicted = logits.argmax(dim=1)
    present = labels.unique()
    per_class = [(predicted[labels == c] == c).float().mean() for c in present]
    return {
        "top1": 100.0 * topk_correct(logits, labels, 1) / count,
        "top5": 100.0 * topk_correct(logits, labels, 5) / count,
        "mean_class_accuracy": 100.0 * float(torch.stack(per_class).mean()),
        "loss": float(F.cross_entropy(logits, labels)),
        "samples": count,
    }


def confusion_matrix(predicted: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """[K, K] counts: row = true class, column = predicted class."""
    return np.bincount(labels * num_classes + predicted, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def plot_confusion(matrix: np.ndarray, names: list[str], path: Path, title: str):
    """Row-normalised confusion matrix with every class named on the rows and numbered on the columns."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(names)
    rates = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    size = max(6.0, 0.16 * k + 3.0)
    fontsize = 7 if k <= 60 else 5
    fig, ax = plt.subplots(figsize=(size + 2.5, size))
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k), [str(i) for i in range(k)], fontsize=fontsize, rotation=90)
    ax.set_yticks(range(k), [f"{name[:32]}  {i}" for i, name in enumerate(names)], fontsize=fontsize)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, fraction=0.03, label="share of the true class")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_evaluation(out_dir: Path, metrics: dict, logits: torch.Tensor, labels: torch.Tensor,
                     dataset: ActionDataset, names: list[str], cfg: Config, checkpoint: str):
    """metrics.json, per_class.csv, confusion.png and predictions.npz in `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    record = dict(metrics, checkpoint=str(checkpoint), split=dataset.split, dataset=cfg.data.dataset,
                  protocol={"num_clips": 1, "flip_test": False, "stream": "joint"}, config=config_to_dict(cfg))
    (out_dir / "metrics.json").write_text(json.dumps(record, indent=2))
    predicted, truth = logits.argmax(dim=1).numpy(), labels.numpy()
    matrix = confusion_matrix(predicted, truth, len(names))
    with open(out_dir / "per_class.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["label", "class", "samples", "correct", "accuracy"])
        for c, name in enumerate(names):
            samples, correct = int(matrix[c].sum()), int(matrix[c, c])
            writer.writerow([c, name, samples, correct, f"{100.0 * correct / samples:.2f}" if samples else ""])
    plot_confusion(matrix, names, out_dir / "confusion.png",
                   f"{cfg.data.dataset} {dataset.split}: top-1 {metrics['top1']:.2f}%")
    np.savez(out_dir / "predictions.npz", frame_dir=dataset.frame_dirs, label=truth, logits=logits.numpy())


def evaluate_checkpoint(cfg: Config, checkpoint, out_dir=None) -> dict:
    """Evaluate a checkpoint on the validation split of the config; write the artefacts to `out_dir`
    (default: '<checkpoint stem>_eval' beside the checkpoint). Returns the metrics."""
    checkpoint = Path(checkpoint)
    out_dir = Path(out_dir) if out_dir else checkpoint.with_name(f"{checkpoint.stem}_eval")
    setup_logging()
    device = pick_device(cfg.train.device)
    names = class_names(cfg.data.action_classes, cfg.data.label_map)
    dataset = ActionDataset(load_store(cfg.data.pickle_path), cfg.data, train=False, seed=cfg.train.seed)
    model = build_model(cfg)
    note = load_model_weights(model, checkpoint)
    if note:
        log.info(note)
    model.to(device)
    loader = eval_loader(dataset, cfg.train.batch_size, cfg.data.num_workers, device)
    logits, labels = predict(model, loader, device)
    metrics = classification_metrics(logits, labels)
    write_evaluation(out_dir, metrics, logits, labels, dataset, names, cfg, str(checkpoint))
    log.info(f"{checkpoint} on {cfg.data.dataset} {dataset.split} ({metrics['samples']} clips): "
             f"loss {metrics['loss']:.4f}  top-1 {metrics['top1']:.2f}  top-5 {metrics['top5']:.2f}  "
             f"mean class accuracy {metrics['mean_class_accuracy']:.2f}")
    log.info(f"wrote metrics.json, per_class.csv, confusion.png, predictions.npz to {out_dir}")
    return metrics
