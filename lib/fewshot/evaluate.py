"""Evaluating embedding models (evaluate_action.py):

* `evaluate_embedding`: a checkpoint the one-shot way on the config's test split (the novel classes with
  data_split oneshot, else the validation split): every clip takes the class of its most similar exemplar
  (the protocol's named exemplars, else each class's first clip); plus k-shot curves over random draws.
* `evaluate_gallery`: a gallery (lib/fewshot/gallery.py) on a labelled split: top-1 of the clips whose class
  is in the gallery (matched by class name, `name_key`; the gallery's own examples, by file name = frame_dir,
  left out), how often they are called "unknown", how often clips of other
  classes are, and k-shot curves of the same model on the split itself.

Both write metrics.json, per_class.csv, confusion.png (with class names) and predictions.npz.
"""
import json
import logging
import re
from pathlib import Path

import numpy as np

from lib.config import Config, config_to_dict
from lib.engine.embedding import split_exemplars
from lib.engine.evaluate import clip_embeddings, confusion_matrix, plot_confusion, predict_checkpoint, write_per_class
from lib.engine.matching import UNKNOWN, k_shot_accuracy, one_shot_accuracy
from lib.errors import UserError
from lib.fewshot.gallery import Gallery, TorchEmbedder

log = logging.getLogger(__name__)
K_SHOTS = (1, 2, 5)  # examples a class of the k-shot curves
DRAWS = 10  # random draws per k


def name_key(name: str) -> str:
    """A class name as compared between a gallery's folders and a label map: lower case, every run of other
    characters than letters and digits one space ('Drink_Water' and 'drink water' match, and a folder
    'eat meal-snack' matches the label 'eat meal/snack')."""
    return re.sub(r"[^0-9a-z]+", " ", name.lower()).strip()


def test_split(cfg: Config) -> str | None:
    """The split an embedding model is evaluated on: the novel classes of the one-shot protocol, else (None)
    the config's evaluation split."""
    return "oneshot_test" if cfg.data.data_split == "oneshot" else None


def embed_split(cfg: Config, checkpoint, split: str | None):
    """(the trained model with the split, embeddings [S, D], labels [S]) of an embedding checkpoint."""
    if cfg.model.model_version != "embed":
        raise UserError("this needs an embedding model: use its config (model_version: embed, e.g. "
                        "configs/oneshot/oneshot_NTU120_small.yaml)")
    trained, embeddings, labels = predict_checkpoint(cfg, checkpoint, split, outputs=clip_embeddings)
    return trained, embeddings.numpy(), labels.numpy()


def k_shot_curves(embeddings: np.ndarray, labels: np.ndarray, seed: int) -> list[dict]:
    return [k_shot_accuracy(embeddings, labels, k, DRAWS, seed) for k in K_SHOTS]


def write_matching(out_dir: Path, metrics: dict, truth: np.ndarray, predicted: np.ndarray, names: list[str],
                   labels: list, title: str, arrays: dict):
    """The artefacts of a matching evaluation: truth and predicted index into `names` (UNKNOWN: an extra
    "unknown" class, shown when it occurs), `labels` the dataset label of each name."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    with_unknown = bool((predicted == UNKNOWN).any() or (truth == UNKNOWN).any())
    shown = names + ["unknown"] if with_unknown else names
    k = len(shown)
    matrix = confusion_matrix(np.where(predicted == UNKNOWN, k - 1, predicted), np.where(truth == UNKNOWN, k - 1, truth), k)
    write_per_class(out_dir / "per_class.csv", matrix, names, labels)
    rows = [f"{name} (label {label})" for name, label in zip(names, labels)] + shown[len(names):]
    plot_confusion(matrix, rows, out_dir / "confusion.png", f"{title}: top-1 {metrics['top1']:.2f}%")
    np.savez(out_dir / "predictions.npz", **arrays)


def evaluate_embedding(cfg: Config, checkpoint, out_dir=None) -> dict:
    """The one-shot evaluation of an embedding checkpoint (module docstring); artefacts in `out_dir`
    (default '<checkpoint stem>_eval' beside it). Returns the metrics."""
    checkpoint = Path(checkpoint)
    out_dir = Path(out_dir) if out_dir else checkpoint.with_name(f"{checkpoint.stem}_eval")
    trained, embeddings, labels = embed_split(cfg, checkpoint, test_split(cfg))
    split = trained.val_set.split
    frame_dirs = trained.val_set.frame_dirs
    exemplars = split_exemplars(cfg, labels, frame_dirs)
    result = one_shot_accuracy(embeddings, labels, exemplars)
    classes = sorted(exemplars)
    index = {c: i for i, c in enumerate(classes)}
    queries = result["positions"]
    metrics = {"top1": result["top1"], "mean_class_accuracy": result["mean_class_accuracy"],
               "queries": result["queries"], "classes": len(classes),
               "k_shot": k_shot_curves(embeddings, labels, cfg.train.seed),
               "checkpoint": str(checkpoint), "split": split, "dataset": cfg.data.dataset,
               "exemplars": {trained.class_names[c]: str(frame_dirs[exemplars[c]]) for c in classes},
               "config": config_to_dict(cfg)}
    write_matching(out_dir, metrics, np.array([index[int(c)] for c in labels[queries]]),
                   np.array([index[int(c)] for c in result["predicted"]]), [trained.class_names[c] for c in classes],
                   classes, f"one-shot {cfg.data.dataset} {split}",
                   {"frame_dir": frame_dirs[queries], "label": labels[queries], "predicted": result["predicted"],
                    "similarity": result["similarity"], "classes": np.array(classes)})
    shots = ", ".join(f"{c['k']}-shot {c['mean']:.2f} ± {c['std']:.2f}" for c in metrics["k_shot"])
    log.info(f"{checkpoint} on {cfg.data.dataset} {split}: one-shot top-1 {metrics['top1']:.2f}, mean class accuracy "
             f"{metrics['mean_class_accuracy']:.2f} ({metrics['queries']} clips, {len(classes)} classes, one "
             f"exemplar each); random draws: {shots}")
    log.info(f"wrote metrics.json, per_class.csv, confusion.png, predictions.npz to {out_dir}")
    return metrics


def evaluate_gallery(cfg: Config, gallery_path, checkpoint=None, out_dir=None, threshold: float = None) -> dict:
    """A gallery on the config's test split (module docstring), with the checkpoint it was built with (or
    `checkpoint`, which must be that model); artefacts in `out_dir` (default '<gallery stem>_eval')."""
    gallery_path = Path(gallery_path)
    gallery = Gallery.load(gallery_path)
    checkpoint = Path(checkpoint or gallery.model)
    if checkpoint.suffix == ".onnx":
        raise UserError(f"{gallery_path} was built with the ONNX model {checkpoint}: pass --evaluate CKPT, the "
                        "checkpoint it was exported from")
    out_dir = Path(out_dir) if out_dir else gallery_path.with_name(f"{gallery_path.stem}_eval")
    trained, all_embeddings, all_labels = embed_split(cfg, checkpoint, test_split(cfg))
    split = trained.val_set.split
    gallery.check_model(TorchEmbedder(trained.model, cfg, str(checkpoint)))
    examples = {Path(source).stem for source in gallery.sources}
    kept = np.array([str(name) not in examples for name in trained.val_set.frame_dirs])  # the gallery's own: out
    embeddings, labels, frame_dirs = all_embeddings[kept], all_labels[kept], trained.val_set.frame_dirs[kept]
    threshold = gallery.threshold if threshold is None else threshold
    position = {name_key(name): i for i, name in enumerate(gallery.class_names)}
    truth = np.array([position.get(name_key(trained.class_names[c]), UNKNOWN) for c in labels])
    known = truth != UNKNOWN
    if not known.any():
        raise UserError(f"none of the classes of {cfg.data.dataset} {split} is in {gallery_path} (its classes: "
                        f"{', '.join(gallery.class_names[:5])}...): name the class folders as the label map does")
    similarity, predicted = gallery.classify(embeddings, threshold)
    per_class = [np.mean(predicted[truth == c] == c) for c in np.unique(truth[known])]
    metrics = {"top1": 100.0 * float(np.mean(predicted[known] == truth[known])),
               "mean_class_accuracy": 100.0 * float(np.mean(per_class)),
               "known_clips": int(known.sum()), "known_called_unknown": 100.0 * float(np.mean(predicted[known] == UNKNOWN)),
               "other_clips": int((~known).sum()),
               "other_called_unknown": 100.0 * float(np.mean(predicted[~known] == UNKNOWN)) if (~known).any() else None,
               "gallery_examples_left_out": int((~kept).sum()),
               "threshold": threshold, "k_shot": k_shot_curves(all_embeddings, all_labels, cfg.train.seed),
               "gallery": str(gallery_path), "checkpoint": str(checkpoint), "split": split, "dataset": cfg.data.dataset}
    write_matching(out_dir, metrics, truth, predicted, gallery.class_names, list(range(len(gallery.class_names))),
                   f"gallery {gallery_path.name} on {cfg.data.dataset} {split}",
                   {"frame_dir": frame_dirs, "label": labels, "predicted": predicted,
                    "similarity": similarity, "class_names": np.array(gallery.class_names)})
    other = ("" if metrics["other_called_unknown"] is None else
             f"; {metrics['other_clips']} clips of other classes, {metrics['other_called_unknown']:.1f}% called unknown")
    log.info(f"{gallery_path} on {cfg.data.dataset} {split}: top-1 {metrics['top1']:.2f} over {metrics['known_clips']} "
             f"clips of its classes ({metrics['known_called_unknown']:.1f}% called unknown at threshold "
             f"{threshold:.3f}){other}")
    log.info(f"wrote metrics.json, per_class.csv, confusion.png, predictions.npz to {out_dir}")
    return metrics
