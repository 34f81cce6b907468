"""Evaluation: predictions over a split, metrics, and the artefacts of evaluate_action.py
(metrics.json, per_class.csv, confusion.png, predictions.npz)."""
import csv
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from lib import skeleton
from lib.config import Config, config_to_dict
from lib.data.dataset import ActionDataset
from lib.data.labels import class_names
from lib.engine.build import load_trained
from lib.engine.compiled import CompiledOrEager, inference_forward, pad_batch
from lib.engine.runtime import (autocast, data_loader, keep_freed_memory, loader_workers, micro_batch_size, pick_device,
                                setup_logging)
from lib.errors import DAMAGED_FILE_ERRORS, UserError

log = logging.getLogger(__name__)


def eval_loader(dataset: ActionDataset, cfg: Config, device: torch.device):
    """Evaluation batches of train.batch_size clips, in dataset order."""
    return data_loader(dataset, device, loader_workers(cfg, device), batch_size=cfg.train.batch_size, shuffle=False)


def flip_clips(x: torch.Tensor) -> torch.Tensor:
    """Mirror clips [..., V, 3]: swap left and right joints and negate x (clips are centred at x = 0).
    It commutes with the bone and motion streams, whose parents are mirror images too."""
    flipped = x[..., list(skeleton.H36M_MIRROR), :].clone()
    flipped[..., 0] = -flipped[..., 0]
    return flipped


def clip_scores(model, x: torch.Tensor, flip: bool) -> torch.Tensor:
    """Scores [N, K] of a batch: plain logits for one clip [N, 2, T, V, C] without flipping; otherwise
    the log of the softmax probabilities averaged over the clips [N, clips, 2, T, V, C] and the flip."""
    if x.ndim == 5 and not flip:
        return model(x)
    clips = x if x.ndim == 6 else x[:, None]  # [N, clips, 2, T, V, C]
    views = torch.cat([clips, flip_clips(clips)], dim=1) if flip else clips
    probabilities = model(views.flatten(0, 1)).float().softmax(dim=1).unflatten(0, views.shape[:2])
    return probabilities.mean(dim=1).log()


def clip_embeddings(model, x: torch.Tensor, flip: bool) -> torch.Tensor:
    """Embeddings [N, D] of a batch (an embedding model): of one clip [N, 2, T, V, C] without flipping;
    otherwise the unit-length mean of the embeddings of the clips [N, clips, 2, T, V, C] and their mirror images."""
    if x.ndim == 5 and not flip:
        return model(x)
    clips = x if x.ndim == 6 else x[:, None]  # [N, clips, 2, T, V, C]
    views = torch.cat([clips, flip_clips(clips)], dim=1) if flip else clips
    embeddings = model(views.flatten(0, 1)).float().unflatten(0, views.shape[:2])
    return F.normalize(embeddings.mean(dim=1), dim=-1)


@torch.no_grad()
def predict(model, loader, device, max_batches: int = None, flip: bool = False, desc: str = "eval",
            outputs=clip_scores) -> tuple[torch.Tensor, torch.Tensor]:
    """The outputs (float32, CPU; clip_scores [S, K], or clip_embeddings [S, D]) and labels [S] over the
    loader, in loader order. A compiled model (CompiledOrEager) gets every batch at the loader's batch size
    (the last one padded with zero clips, their outputs dropped), so it compiles once."""
    model.eval()
    all_scores, all_labels = [], []
    static_shape = isinstance(model, CompiledOrEager)
    for i, (x, y) in enumerate(tqdm(loader, desc=desc, leave=False, dynamic_ncols=True)):
        if max_batches is not None and i >= max_batches:
            break
        x = x.to(device, non_blocking=True)
        if static_shape:
            x = pad_batch(x, loader.batch_size)
        all_scores.append(outputs(model, x, flip)[:len(y)].float().cpu())
        all_labels.append(y)
    return torch.cat(all_scores), torch.cat(all_labels)


def predict_split(model, dataset, cfg: Config, ctx, amp: bool, max_batches: int = None,
                  outputs=clip_scores) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """`predict` over a dataset with each process (lib.engine.distributed) predicting its share and the
    results gathered: (outputs, labels, dataset positions), in dataset order, the same on every process and
    equal to one process's (with max_batches, the positions say which samples were covered)."""
    positions = list(range(ctx.rank, len(dataset), ctx.world_size))
    share = torch.utils.data.Subset(dataset, positions) if ctx.enabled else dataset
    loader = eval_loader(share, cfg, ctx.device)
    with autocast(ctx.device, amp):
        values, labels = predict(model, loader, ctx.device, max_batches=max_batches, flip=cfg.data.flip_test,
                                 outputs=outputs)
    parts = ctx.gather((positions[:len(labels)], values, labels))
    covered = np.concatenate([p for p, _, _ in parts]).astype(int)
    order = np.argsort(covered, kind="stable")
    return (torch.cat([v for _, v, _ in parts])[order], torch.cat([l for _, _, l in parts])[order],
            covered[order])


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
    """[K, K] counts over all K classes of the label map: row = true class, column = predicted class."""
    return np.bincount(labels * num_classes + predicted, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def plot_confusion(matrix: np.ndarray, names: list[str], path: Path, title: str, all_classes: bool = False):
    """Draw the confusion matrix [K, K] (counts, row = true class) row-normalised into the PNG `path`;
    return the matplotlib Figure (already saved; nothing is registered with pyplot).

    Shown classes: by default those present in the split, i.e. every class that occurs as a true label
    plus every class that is predicted at least once (so each row's shares sum to 1 over the columns
    shown and no prediction is hidden); a predicted class without samples has a grey row. With
    `all_classes`, all K classes of the label map. Rows carry the full class name and the real class id,
    columns the class id. The layout is measured, not guessed: the figure grows until every tick label,
    axis label, title and colorbar label lies inside it, whatever the length of the names."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    dpi, pad, gap, bar = 120, 12, 12, 16  # pixels: figure border, axes-to-colorbar gap, colorbar width
    k = len(names)
    present = np.flatnonzero((matrix.sum(axis=1) > 0) | (matrix.sum(axis=0) > 0))
    shown = np.arange(k) if all_classes or not len(present) else present
    counts = matrix[np.ix_(shown, shown)]
    samples = counts.sum(axis=1, keepdims=True)
    rates = np.ma.masked_array(counts / np.maximum(samples, 1), mask=np.broadcast_to(samples == 0, counts.shape))
    n = len(shown)
    fontsize = 7 if n <= 60 else 5
    side = max(5.0, 0.16 * n) * dpi  # the square matrix, in pixels

    fig = Figure(dpi=dpi)
    FigureCanvasAgg(fig)
    ax, cax = fig.add_axes((0, 0, 1, 1)), fig.add_axes((0, 0, 1, 1))
    image = ax.imshow(rates, cmap=colormaps["Blues"].with_extremes(bad="0.88"), vmin=0, vmax=1,
                      interpolation="nearest")
    if n <= 40:  # few classes: the counts too
        for (row, col), count in np.ndenumerate(counts):
            if count:
                ax.text(col, row, str(count), ha="center", va="center", fontsize=fontsize,
                        color="white" if rates[row, col] > 0.5 else "black")
    ax.set_xticks(range(n), [str(c) for c in shown], fontsize=fontsize, rotation=90)
    ax.set_yticks(range(n), [f"{names[c]}  {c}" for c in shown], fontsize=fontsize)
    ax.tick_params(length=2)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    which = "all classes" if n == k else f"{n} of {k} classes: those with samples or predictions"
    if (samples == 0).any():
        which += "; grey rows: no samples"
    ax.set_title(f"{title}\n{which}")
    fig.colorbar(image, cax=cax, label="share of the true class")

    def place(width: float, height: float, left: float, bottom: float):
        fig.set_size_inches(width / dpi, height / dpi)
        ax.set_position((left / width, bottom / height, side / width, side / height))
        cax.set_position(((left + side + gap) / width, bottom / height, bar / width, side / height))

    # Measure how far the texts reach beyond the matrix (extents are computed also where they fall outside
    # the figure, and in pixels they do not depend on the figure size), then size the figure to that.
    place(side + gap + bar, side, 0, 0)
    renderer = fig.canvas.get_renderer()
    inner = ax.get_window_extent(renderer)
    outer = type(inner).union([ax.get_tightbbox(renderer), cax.get_tightbbox(renderer), inner])
    left, bottom = inner.x0 - outer.x0 + pad, inner.y0 - outer.y0 + pad
    right, top = outer.x1 - inner.x1 + pad, outer.y1 - inner.y1 + pad
    place(np.ceil(left + side + right), np.ceil(bottom + side + top), left, bottom)
    fig.savefig(path, dpi=dpi)
    return fig


def write_per_class(path: Path, matrix: np.ndarray, names: list[str], labels=None):
    """per_class.csv: one row per class of `names` (its label: `labels`, default 0..K-1) with its samples,
    correct predictions and accuracy, from the confusion matrix [K', K'] (K' >= K: extra columns, e.g.
    "unknown", count as wrong)."""
    labels = range(len(names)) if labels is None else labels
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["label", "class", "samples", "correct", "accuracy"])
        for c, (label, name) in enumerate(zip(labels, names)):
            samples, correct = int(matrix[c].sum()), int(matrix[c, c])
            writer.writerow([label, name, samples, correct, f"{100.0 * correct / samples:.2f}" if samples else ""])


def write_evaluation(out_dir: Path, metrics: dict, scores: torch.Tensor, labels: torch.Tensor, frame_dirs,
                     names: list[str], title: str, details: dict, all_classes: bool = False):
    """metrics.json (metrics plus `details`), per_class.csv (every class of the label map), confusion.png
    (the classes present in the split, or all with `all_classes`; see plot_confusion) and predictions.npz
    (frame_dir, label, logits: the scores, probabilities: their softmax) in `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(dict(metrics, **details), indent=2))
    predicted, truth = scores.argmax(dim=1).numpy(), labels.numpy()
    matrix = confusion_matrix(predicted, truth, len(names))
    write_per_class(out_dir / "per_class.csv", matrix, names)
    plot_confusion(matrix, names, out_dir / "confusion.png", f"{title}: top-1 {metrics['top1']:.2f}%",
                   all_classes=all_classes)
    np.savez(out_dir / "predictions.npz", frame_dir=np.asarray(frame_dirs), label=truth, logits=scores.numpy(),
             probabilities=scores.softmax(dim=1).numpy())


def log_metrics(what: str, metrics: dict, out_dir: Path):
    log.info(f"{what} ({metrics['samples']} clips): loss {metrics['loss']:.4f}  top-1 {metrics['top1']:.2f}  "
             f"top-5 {metrics['top5']:.2f}  mean class accuracy {metrics['mean_class_accuracy']:.2f}")
    log.info(f"wrote metrics.json, per_class.csv, confusion.png, predictions.npz to {out_dir}")


def predict_checkpoint(cfg: Config, checkpoint, split: str = None, outputs=clip_scores):
    """(the trained model with its split, the outputs, the labels) of a checkpoint over the config's validation
    split (or `split`), on the config's device, with its autocast and compile settings (CUDA graphs on CUDA)."""
    setup_logging()
    keep_freed_memory()
    device = pick_device(cfg.train.device)
    trained = load_trained(cfg, checkpoint, device, micro_batch_size(cfg, device), split=split)
    loader = eval_loader(trained.val_set, cfg, device)
    with autocast(device, cfg.train.amp):
        values, labels = predict(inference_forward(trained.model, cfg.train.compile, device), loader, device,
                                 flip=cfg.data.flip_test, outputs=outputs)
    return trained, values, labels


def evaluate_checkpoint(cfg: Config, checkpoint, out_dir=None, save_scores=None,
                        confusion_all_classes: bool = False) -> dict:
    """Evaluate a checkpoint on the validation split of the config; write the artefacts to `out_dir`
    (default: '<checkpoint stem>_eval' beside the checkpoint) and, with `save_scores`, a copy of
    predictions.npz there (for --ensemble). Returns the metrics."""
    checkpoint = Path(checkpoint)
    out_dir = Path(out_dir) if out_dir else checkpoint.with_name(f"{checkpoint.stem}_eval")
    trained, scores, labels = predict_checkpoint(cfg, checkpoint)
    dataset, names = trained.val_set, trained.class_names
    metrics = classification_metrics(scores, labels)
    details = {"checkpoint": str(checkpoint), "split": dataset.split, "dataset": cfg.data.dataset,
               "protocol": {"num_clips": cfg.data.num_clips, "flip_test": cfg.data.flip_test,
                            "stream": cfg.data.stream},
               "config": config_to_dict(cfg)}
    write_evaluation(out_dir, metrics, scores, labels, dataset.frame_dirs, names,
                     f"{cfg.data.dataset} {dataset.split}", details, all_classes=confusion_all_classes)
    if save_scores and Path(save_scores).resolve() != (out_dir / "predictions.npz").resolve():
        Path(save_scores).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out_dir / "predictions.npz", save_scores)
    log_metrics(f"{checkpoint} on {cfg.data.dataset} {dataset.split}", metrics, out_dir)
    return metrics


def read_scores(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"scores file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in ("frame_dir", "label", "probabilities")}
    except (*DAMAGED_FILE_ERRORS, KeyError) as e:
        raise UserError(f"{path} is not a scores file of evaluate_action.py --save-scores "
                        f"({' '.join(str(e).split())[:120]})") from None


def ensemble(cfg: Config, paths: list, weights: list = None, out_dir="ensemble_eval") -> dict:
    """Fuse saved scores: the weighted mean of the class probabilities of several evaluations of the
    same samples (e.g. joint, bone and motion streams). Writes the same artefacts as an evaluation."""
    setup_logging()
    weights = weights or [1.0] * len(paths)
    if len(weights) != len(paths):
        raise UserError(f"--weights gives {len(weights)} numbers for {len(paths)} score files")
    if min(weights) < 0 or sum(weights) <= 0:
        raise UserError(f"--weights must be non-negative with a positive sum, got {weights}")
    runs = [read_scores(p) for p in paths]
    order = np.argsort(runs[0]["frame_dir"])
    frame_dirs, labels = runs[0]["frame_dir"][order], runs[0]["label"][order]
    fused = np.zeros_like(runs[0]["probabilities"][order], dtype=np.float64)
    for path, run, weight in zip(paths, runs, weights):
        run_order = np.argsort(run["frame_dir"])
        if not np.array_equal(run["frame_dir"][run_order], frame_dirs):
            raise UserError(f"{path} covers other samples than {paths[0]}: fuse evaluations of the same split")
        if not np.array_equal(run["label"][run_order], labels):
            raise UserError(f"{path} gives other labels than {paths[0]} for the same samples")
        if run["probabilities"].shape[1] != cfg.data.action_classes:
            raise UserError(f"{path} has scores for {run['probabilities'].shape[1]} classes, but action_classes "
                            f"is {cfg.data.action_classes}: use the config the evaluations were made with")
        fused += weight * run["probabilities"][run_order]
    scores = torch.from_numpy(np.log(fused / sum(weights))).float()
    labels = torch.from_numpy(labels).long()
    metrics = classification_metrics(scores, labels)
    out_dir = Path(out_dir)
    names = class_names(cfg.data.action_classes, cfg.data.label_map)
    write_evaluation(out_dir, metrics, scores, labels, frame_dirs, names, "ensemble",
                     {"ensemble": [str(p) for p in paths], "weights": list(weights)})
    log_metrics(f"ensemble of {len(paths)}", metrics, out_dir)
    return metrics
