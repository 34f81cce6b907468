"""Galleries: a few examples of each of your own classes, embedded once by an embedding model, then used to
name the class of new clips by their nearest class (cosine similarity to the class's mean embedding), or
"unknown" below a threshold. Adding a class is adding a folder and rebuilding the gallery: no training.

    python -m lib.fewshot.gallery --checkpoint best_epoch.bin --examples DIR --out gallery.npz
    python -m lib.fewshot.gallery --onnx embed.onnx --examples DIR --out gallery.npz      (no torch needed)

DIR holds one folder per class (the folder's name is the class name) of keypoint files (.npz, .npy, .json,
as lib/data/keypoint_files.py reads them) or videos (poses extracted with --backend, lib/video/). One example
a class is enough. The gallery file (numpy .npz) holds the class names, every example's embedding and source
file, the suggested "unknown" threshold (from the examples' own leave-one-out similarities,
lib/engine/matching.suggest_threshold), the model's test pipeline, and the model's embedding of a fixed
probe clip, by which a gallery refuses to be used with another model.
"""
import argparse
import json
import logging
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from lib.data.keypoint_files import DEFAULT_IMG_SHAPE, Keypoints, read_array_file, read_json_file
from lib.data.preprocess import ClipSettings
from lib.engine.matching import leave_one_out_similarities, nearest, prototypes, suggest_threshold
from lib.errors import DAMAGED_FILE_ERRORS, UserError

log = logging.getLogger(__name__)
GALLERY_FORMAT = 1
KEYPOINT_SUFFIXES = (".npz", ".npy", ".json")
PROBE_SEED = 20_261_204
PROBE_MIN_COSINE = 0.999  # the same model gives the same probe embedding up to float rounding (ONNX vs PyTorch)


def probe_clip(clip_len: int) -> np.ndarray:
    """A fixed clip [1, 2, clip_len, 17, 3] whose embedding identifies a model."""
    return np.random.default_rng(PROBE_SEED).uniform(-1, 1, (1, 2, clip_len, 17, 3)).astype(np.float32)


@dataclass
class Gallery:
    class_names: list  # [C]
    embeddings: np.ndarray  # [E, D] unit length, one per example
    labels: np.ndarray  # [E] index into class_names
    sources: list  # [E] the example files
    threshold: float  # suggested: below it a clip is "unknown"
    probe: np.ndarray  # [D] the model's embedding of probe_clip
    settings: ClipSettings  # the model's test pipeline
    model: str  # the checkpoint or ONNX file the gallery was built with

    @property
    def prototypes(self) -> np.ndarray:
        """[C, D] the unit-length mean embedding of each class."""
        return prototypes(self.embeddings, self.labels, range(len(self.class_names)))

    def classify(self, embeddings: np.ndarray, threshold: float = None) -> tuple[np.ndarray, np.ndarray]:
        """(similarity [N, C] of each embedding to each class, predicted class [N], UNKNOWN where the best
        similarity is below `threshold`, which defaults to the gallery's suggestion)."""
        prototypes_ = self.prototypes
        predicted, _ = nearest(embeddings, prototypes_, self.threshold if threshold is None else threshold)
        return embeddings @ prototypes_.T, predicted

    def check_model(self, embedder):
        """A one-line error unless `embedder` is the model the gallery was built with."""
        if embedder.settings.clip_len != self.settings.clip_len:
            raise UserError(f"the gallery was built with another model ({self.model}, clips of "
                            f"{self.settings.clip_len} frames) than {embedder.name} ({embedder.settings.clip_len}); "
                            "rebuild it with python -m lib.fewshot.gallery")
        probe = embedder.embed(probe_clip(self.settings.clip_len))[0]
        if probe.shape != self.probe.shape or float(probe @ self.probe) < PROBE_MIN_COSINE:
            raise UserError(f"the gallery was built with another model ({self.model}) than {embedder.name}; "
                            "rebuild it with python -m lib.fewshot.gallery")

    def save(self, path):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            np.savez(f, format=np.int64(GALLERY_FORMAT), class_names=np.array(self.class_names, dtype=str),
                     embeddings=self.embeddings.astype(np.float32), labels=self.labels.astype(np.int64),
                     sources=np.array(self.sources, dtype=str), threshold=np.float64(self.threshold),
                     probe=self.probe.astype(np.float32), settings=np.str_(json.dumps(asdict(self.settings))),
                     model=np.str_(self.model))

    @classmethod
    def load(cls, path) -> "Gallery":
        path = Path(path)
        if not path.is_file():
            raise UserError(f"gallery not found: {path}; build one with python -m lib.fewshot.gallery")
        try:
            with np.load(path, allow_pickle=False) as data:
                if int(data["format"]) != GALLERY_FORMAT:
                    raise UserError(f"{path} is a gallery of format {int(data['format'])}; rebuild it with "
                                    "python -m lib.fewshot.gallery")
                settings = json.loads(str(data["settings"]))
                return cls([str(n) for n in data["class_names"]], data["embeddings"], data["labels"],
                           [str(s) for s in data["sources"]], float(data["threshold"]), data["probe"],
                           ClipSettings(**dict(settings, scale_range=tuple(settings["scale_range"]))),
                           str(data["model"]))
        except (*DAMAGED_FILE_ERRORS, KeyError) as e:
            raise UserError(f"{path} is not a gallery of python -m lib.fewshot.gallery "
                            f"({' '.join(str(e).split())[:120]})") from None


class TorchEmbedder:
    """An embedding model in PyTorch with its test pipeline (`from_checkpoint`: rebuilt from the config saved
    in a checkpoint of ours)."""

    def __init__(self, model, cfg, name: str, batch_size: int = 16):
        import torch

        self.torch, self.model, self.name, self.batch_size = torch, model, name, batch_size
        self.device = next(model.parameters()).device
        d = cfg.data
        self.settings = ClipSettings(d.clip_len, tuple(d.scale_range_test), d.legacy_conf_order, d.stream)

    @classmethod
    def from_checkpoint(cls, checkpoint, device: str = "cpu") -> "TorchEmbedder":
        from lib.engine.build import action_model
        from lib.engine.checkpoint import load_checkpoint, load_model_weights
        from lib.engine.runtime import pick_device

        cfg = checkpoint_config(load_checkpoint(checkpoint), checkpoint)
        model = action_model(cfg)
        load_model_weights(model, checkpoint)
        return cls(model.to(pick_device(device)).eval(), cfg, str(checkpoint))

    def embed(self, clips: np.ndarray) -> np.ndarray:
        """[N, 2, T, 17, 3] -> unit-length embeddings [N, D] (float32)."""
        parts = []
        with self.torch.no_grad():
            for start in range(0, len(clips), self.batch_size):
                x = self.torch.from_numpy(np.ascontiguousarray(clips[start:start + self.batch_size]))
                parts.append(self.model(x.to(self.device)).float().cpu().numpy())
        return np.concatenate(parts)


def checkpoint_config(state, path):
    """The Config saved in a training checkpoint of ours, which must be an embedding model's."""
    from lib.config import Config, apply_mapping, validate

    if not isinstance(state, dict) or not isinstance(state.get("config"), dict):
        raise UserError(f"{path} holds no config: use a checkpoint of train_action.py (best_epoch.bin, ...)")
    cfg = Config(name=Path(path).stem)
    apply_mapping(cfg, state["config"], str(path))
    if cfg.model.model_version != "embed":
        raise UserError(f"{path} is a classification model; galleries need an embedding model "
                        "(model_version: embed, e.g. configs/oneshot/oneshot_NTU120_small.yaml)")
    return validate(cfg)


def load_embedder(checkpoint=None, onnx=None, device: str = "cpu"):
    """The embedding model of a checkpoint (PyTorch) or of an exported ONNX file (ONNX Runtime, no torch)."""
    if onnx:
        from lib.deploy.inference import OnnxActionModel

        model = OnnxActionModel(onnx)
        if model.task != "embed":
            raise UserError(f"{onnx} is a classification model; galleries need an exported embedding model "
                            "(deployment_action.py with an embedding checkpoint)")
        return model
    return TorchEmbedder.from_checkpoint(checkpoint, device)


def class_folders(examples) -> list[Path]:
    examples = Path(examples)
    if not examples.is_dir():
        raise UserError(f"--examples {examples} is not a folder; give a folder with one sub-folder per class")
    folders = sorted(p for p in examples.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise UserError(f"{examples} has no class folders; put each class's examples in a folder named after it")
    return folders


def example_files(folder: Path) -> list[Path]:
    """The keypoint files and videos of a class folder; none is a one-line error."""
    from lib.video.frames import VIDEO_SUFFIXES

    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                   and p.suffix.lower() in KEYPOINT_SUFFIXES + VIDEO_SUFFIXES)
    if not files:
        raise UserError(f"class folder {folder} has no examples: put keypoint files ({', '.join(KEYPOINT_SUFFIXES)}) "
                        f"or videos ({', '.join(VIDEO_SUFFIXES)}) in it, or remove it")
    return files


class ExampleReader:
    """The keypoints of one example: a keypoint file as it is, a video through the pose estimator (`backend`,
    loaded at the first video and kept)."""

    def __init__(self, img_hw, backend: str, device: str, max_persons: int):
        self.img_hw, self.backend, self.device, self.max_persons = img_hw, backend, device, max_persons
        self.estimator = None

    def __call__(self, path: Path) -> Keypoints:
        suffix = path.suffix.lower()
        if suffix == ".json":
            return read_json_file(path, self.img_hw)
        if suffix in (".npz", ".npy"):
            return read_array_file(path, self.img_hw)
        from lib.video.estimators import load_estimator
        from lib.video.extract import extract
        from lib.video.frames import FrameSource

        self.estimator = self.estimator or load_estimator(self.backend, self.device)
        extraction = extract(FrameSource(path), self.estimator, self.max_persons, progress=False)
        if not extraction.detections:
            raise UserError(f"{path}: no person was detected in the video; remove it or try another --backend")
        return extraction.keypoints


def build_gallery(embedder, examples, img_hw=DEFAULT_IMG_SHAPE, backend: str = "rtmlib", device: str = "cpu",
                  max_persons: int = 2) -> Gallery:
    """Embed every example of every class folder of `examples` (module docstring)."""
    read = ExampleReader(img_hw, backend, device, max_persons)
    names, clips, labels, sources = [], [], [], []
    for label, folder in enumerate(class_folders(examples)):
        names.append(folder.name)
        for path in example_files(folder):
            keypoints = read(path)
            clips.append(embedder.settings.clip(keypoints.keypoint, keypoints.score, keypoints.img_hw))
            labels.append(label)
            sources.append(str(path))
    embeddings = embedder.embed(np.stack(clips))
    labels = np.array(labels)
    probe = embedder.embed(probe_clip(embedder.settings.clip_len))[0]
    return Gallery(names, embeddings, labels, sources, suggest_threshold(embeddings, labels), probe,
                   embedder.settings, embedder.name)


def describe(gallery: Gallery) -> list[str]:
    """Lines about a gallery: its classes and examples, the suggested threshold, the leave-one-out check."""
    counts = np.bincount(gallery.labels, minlength=len(gallery.class_names))
    lines = [f"{len(gallery.class_names)} classes, {len(gallery.labels)} examples: "
             + ", ".join(f"{name} ({count})" for name, count in zip(gallery.class_names, counts))]
    genuine, impostor = leave_one_out_similarities(gallery.embeddings, gallery.labels)
    ranges = [f"{what}: {values.min():.3f}..{values.max():.3f}" for what, values in
              (("leave-one-out similarity to the own class", genuine), ("best other class", impostor)) if len(values)]
    if ranges:
        lines.append("; ".join(ranges))
    lines.append(f"suggested unknown threshold: {gallery.threshold:.3f} (cosine similarity; infer_action.py --threshold)")
    return lines


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m lib.fewshot.gallery", description=__doc__.splitlines()[0])
    model = p.add_mutually_exclusive_group(required=True)
    model.add_argument("--checkpoint", help="an embedding checkpoint of train_action.py (model_version: embed)")
    model.add_argument("--onnx", help="an embedding model exported by deployment/deployment_action.py")
    p.add_argument("--examples", required=True, help="folder with one sub-folder of examples per class")
    p.add_argument("--out", required=True, help="the gallery file to write (.npz)")
    p.add_argument("--img-shape", type=int, nargs=2, default=DEFAULT_IMG_SHAPE, metavar=("H", "W"),
                   help="image height and width of keypoint files without one (default 1080 1920)")
    p.add_argument("--backend", default="rtmlib", help="pose estimator for videos (see deployment/extract_poses.py)")
    p.add_argument("--device", default="cpu", help="cpu or cuda: the model (--checkpoint) and the pose estimator")
    p.add_argument("--max-persons", type=int, default=2, help="persons kept per video (default 2)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    start = time.perf_counter()
    embedder = load_embedder(args.checkpoint, args.onnx, args.device)
    gallery = build_gallery(embedder, args.examples, tuple(args.img_shape), args.backend, args.device,
                            args.max_persons)
    gallery.save(args.out)
    for line in describe(gallery):
        print(line)
    print(f"wrote {args.out} in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    from lib.cli import run_main

    sys.exit(run_main(main))
