"""Few-shot recognition of novel actions: on the synthetic NTU120 one-shot preset (lib/data/synthetic.py,
ntu120_oneshot; the protocol of lib/data/oneshot.py), train on the auxiliary classes and recognise the 20
novel ones from one or a few examples each, with three kinds of features per clip:

    embedding    (a) an embedding model (configs/oneshot/oneshot_demo.yaml, model_version embed), trained on
                 oneshot_train with the supervised contrastive loss; its best_epoch.bin (picked by one-shot
                 top-1 on the 20 held-out auxiliary classes, oneshot_val)
    classifier   (b) a classifier of the same backbone size trained on the same split and epochs
                 (model_version class); its latest_epoch.bin (its validation, on classes it never saw, picks
                 nothing); the features are what its ClassificationHead pools before fc1 (mean over time,
                 joints flattened, mean over persons), from the backbone in eval mode, L2-normalised
    raw          (c) the test clip itself ([2, T, 17, 3], normalised keypoints and confidences), flattened and
                 L2-normalised: nearest neighbour on the input

each matched the same way (cosine similarity, lib/engine/matching.py) on the novel classes (oneshot_test):
the protocol's 1-shot top-1 (its named exemplars, lib.engine.embedding.split_exemplars), and 1-shot and
5-shot top-1 over --draws random draws of the examples (k_shot_accuracy: nearest class mean), mean ± std.
Then the time to build a gallery (lib/fewshot/gallery.py) of --gallery-per-class keypoint files (.npz) of
each novel class with the embedding checkpoint (TorchEmbedder, on --gallery-device, the CPU by default):
the first build (cold), the median of --gallery-repeats more (warm), and the model alone on the stacked
clips; the same with the model exported to ONNX (ONNX Runtime on the CPU; skipped with --no-onnx).
The trainings are `python train_action.py` (its main), each in a fresh process, on the real
config with `--set` overrides for the data, the epochs and the model version; every --set KEY=VALUE given
here goes to both trainings (e.g. a bigger model on CUDA: --set dim_rep=128 --set depth=6 --set num_heads=8
--set hidden_dim=1024).

    python benchmarks/bench_fewshot.py [--quick] [--num-samples 4800] [--epochs 10] [--draws 10] [--seed 0]
        [--device auto|cpu|cuda] [--set KEY=VALUE ...] [--gallery-per-class 5] [--gallery-repeats 3]
        [--gallery-device cpu] [--no-onnx] [--work DIR] [--out benchmarks/results/fewshot_<device>.json]

--num-samples is the balanced part of the pickle (40 clips a class by default; the protocol's 40 named
exemplars come on top). --seed seeds the pickle, both trainings and the random draws. Prints a table and
writes JSON with the settings, the model sizes, the seconds of each phase and the load of the machine
during the gallery timing. --quick: 720 samples (6 a class, so 5-shot draws still leave queries), one epoch,
3 draws, 2 gallery files a class and one warm repeat, no DataLoader workers: a smoke run of about a minute
on two idle cores; it writes JSON only to --out.
"""
import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import machine_info, machine_load, median_seconds, out_path, write_result  # noqa: E402
from lib.data import synthetic  # noqa: E402
from lib.data.oneshot import NOVEL_ACTIONS  # noqa: E402

CONFIG = "configs/oneshot/oneshot_demo.yaml"
PRESET = "ntu120_oneshot"
FEATURES = ("embedding", "classifier", "raw")
LABELS = {"embedding": "(a) embedding model", "classifier": "(b) classifier, pooled features",
          "raw": "(c) raw keypoints"}
SHOTS = (1, 5)


def sets(*assignments) -> list[str]:
    return [arg for a in assignments for arg in ("--set", a)]


@contextlib.contextmanager
def phase(seconds: dict, name: str):
    """Store in `seconds[name]` the wall seconds of the block."""
    start = time.perf_counter()
    yield
    seconds[name] = round(time.perf_counter() - start, 2)


def write_data(work: Path, num_samples: int, seed: int) -> tuple[dict, Path]:
    """The synthetic one-shot pickle (its name must say ntu120 for data_split oneshot)."""
    data_root = work / "data"
    data_root.mkdir(parents=True, exist_ok=True)
    path = data_root / f"ntu120_oneshot_bench_{num_samples}_seed{seed}.pkl"
    data = synthetic.generate(PRESET, seed=seed, num_samples=num_samples)
    synthetic.write_pickle(data, path)
    return data, path


def train(version: str, out: Path, data: Path, args) -> dict:
    """`python train_action.py` (its main) on the demo config in a fresh process, `version` the
    model_version; its command and metrics per epoch. Fails loudly."""
    argv = (["train_action.py", "--config", CONFIG, "--checkpoint", str(out), "--seed", str(args.seed),
             "--device", args.device]
            + sets(f"data_root={data.parent}", f"dataset={data.stem}", f"epochs={args.epochs}",
                   f"model_version={version}", *args.overrides))
    command = "python " + " ".join(argv)
    print(f"training the {'embedding model' if version == 'embed' else 'classifier'}: {command}", flush=True)
    child = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True)
    if child.returncode:
        sys.exit(f"training failed (status {child.returncode}): {command}\n{child.stdout[-2000:]}"
                 f"{child.stderr[-3000:]}")
    epochs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    last = epochs[-1]
    print(f"  {len(epochs)} epochs, {sum(r['seconds'] for r in epochs):.0f} s of epochs; last epoch: "
          + ", ".join(f"{k} {v:.3f}" for k, v in last.items() if k.startswith(("train_", "val_"))), flush=True)
    return {"command": command, "epochs": epochs}


def run_config(out: Path):
    """The resolved config a training run saved."""
    from lib.config import load_yaml_config

    return load_yaml_config(out / "config.yaml")


def pooled_features(model, x: torch.Tensor, flip: bool) -> torch.Tensor:
    """What a ClassificationHead pools before fc1 (mean over time, joints flattened, mean over persons, the
    zero-padded person included), from the model's backbone, L2-normalised: [N, V*C]. Several clips or
    the flip ([N, clips, 2, T, V, C]): the mean over them, then normalised. The `outputs` of predict."""
    from lib.engine.evaluate import flip_clips
    from lib.model.backbone import in_chunks

    clips = x if x.ndim == 6 else x[:, None]
    views = torch.cat([clips, flip_clips(clips)], dim=1) if flip else clips
    flat = views.flatten(0, 1)  # [B, M, T, V, C]
    n, m = flat.shape[:2]
    features = in_chunks(model.backbone, model.micro_batch * m, flat.flatten(0, 1)).unflatten(0, (n, m))
    pooled = features.float().mean(dim=2).flatten(2).mean(dim=1)  # [B, V*C]
    return F.normalize(pooled.unflatten(0, views.shape[:2]).mean(dim=1), dim=-1)


def model_features(cfg, checkpoint: Path, device: torch.device, outputs):
    """(features [S, D], labels [S], the novel classes' dataset) of a checkpoint on oneshot_test."""
    from lib.engine.build import load_trained
    from lib.engine.evaluate import eval_loader, predict
    from lib.engine.runtime import autocast, micro_batch_size

    trained = load_trained(cfg, checkpoint, device, micro_batch_size(cfg, device), split="oneshot_test")
    loader = eval_loader(trained.val_set, cfg, device)
    with autocast(device, cfg.train.amp):
        features, labels = predict(trained.model, loader, device, flip=cfg.data.flip_test, outputs=outputs,
                                   desc="features")
    return features.float().numpy(), labels.numpy(), trained.val_set


def raw_features(dataset) -> np.ndarray:
    """Each test clip as it enters the model, flattened and L2-normalised: [S, 2 * T * 17 * 3]."""
    from lib.engine.matching import normalize

    return normalize(np.stack([dataset[i][0].reshape(-1) for i in range(len(dataset))]).astype(np.float32))


def matching(cfg, features: np.ndarray, labels: np.ndarray, frame_dirs, draws: int, seed: int) -> dict:
    """The protocol's one-shot top-1 (named exemplars) and k-shot top-1 over random draws."""
    from lib.engine.embedding import split_exemplars
    from lib.engine.matching import k_shot_accuracy, one_shot_accuracy

    exemplars = split_exemplars(cfg, labels, frame_dirs)
    named = one_shot_accuracy(features, labels, exemplars)
    return {"dim": int(features.shape[1]), "clips": len(labels), "classes": len(exemplars),
            "one_shot_named": {"top1": named["top1"], "mean_class_accuracy": named["mean_class_accuracy"],
                               "queries": named["queries"]},
            "k_shot": {str(k): k_shot_accuracy(features, labels, k, draws, seed) for k in SHOTS}}


def write_examples(data: dict, folder: Path, per_class: int) -> int:
    """The first `per_class` samples of each novel class as keypoint files (.npz), one folder a class."""
    from lib.data.keypoint_files import Keypoints, write_npz

    written = {}
    for ann in data["annotations"]:
        action = ann["label"] + 1
        if action in NOVEL_ACTIONS and written.get(action, 0) < per_class:
            class_folder = folder / f"A{action:03d}"
            class_folder.mkdir(parents=True, exist_ok=True)
            write_npz(class_folder / f"{ann['frame_dir']}.npz",
                      Keypoints(ann["keypoint"], ann["keypoint_score"], tuple(ann["img_shape"])), ann["frame_dir"])
            written[action] = written.get(action, 0) + 1
    return sum(written.values())


def time_gallery(embedder, examples: Path, engine: str, load_seconds: float, repeats: int) -> dict:
    """build_gallery (reading the keypoint files, making the clips, embedding them and the probe clip) once
    cold and `repeats` times warm (their median), and the model alone on the stacked clips (median of
    `repeats` after a warm-up): seconds in all and per example."""
    from lib.data.keypoint_files import DEFAULT_IMG_SHAPE, read_array_file
    from lib.fewshot.gallery import build_gallery, class_folders, example_files

    record = {"engine": engine, "load_seconds": round(load_seconds, 3), "warm_repeats": repeats}
    with machine_load(record):
        start = time.perf_counter()
        gallery = build_gallery(embedder, examples)
        record["cold_seconds"] = round(time.perf_counter() - start, 4)
        warm = []
        for _ in range(repeats):
            start = time.perf_counter()
            build_gallery(embedder, examples)
            warm.append(time.perf_counter() - start)
        record["warm_seconds_each"] = [round(t, 4) for t in warm]
        record["warm_seconds"] = round(statistics.median(warm), 4)
        keypoints = [read_array_file(path, DEFAULT_IMG_SHAPE) for folder in class_folders(examples)
                     for path in example_files(folder)]
        clips = np.stack([embedder.settings.clip(k.keypoint, k.score, k.img_hw) for k in keypoints])
        record["model_seconds"] = round(median_seconds(lambda: embedder.embed(clips), repeats), 4)
    count = len(gallery.labels)
    for key in ("cold", "warm", "model"):
        record[f"{key}_ms_per_example"] = round(1000 * record[f"{key}_seconds"] / count, 3)
    record.update(examples=count, classes=len(gallery.class_names), threshold=gallery.threshold)
    record["embeddings"] = gallery.embeddings  # compared between engines, then dropped
    return record


def galleries(data: dict, checkpoint: Path, work: Path, args) -> list[dict]:
    """Gallery build times with the embedding checkpoint in PyTorch (on --gallery-device) and, unless
    --no-onnx, exported to ONNX (ONNX Runtime on the CPU)."""
    from lib.fewshot.gallery import TorchEmbedder

    examples = work / "gallery_examples"
    count = write_examples(data, examples, args.gallery_per_class)
    print(f"gallery: {count} keypoint files of {len(NOVEL_ACTIONS)} novel classes in {examples}", flush=True)
    start = time.perf_counter()
    embedder = TorchEmbedder.from_checkpoint(checkpoint, args.gallery_device)
    runs = [time_gallery(embedder, examples, f"pytorch_{embedder.device.type}", time.perf_counter() - start,
                         args.gallery_repeats)]
    if not args.no_onnx:
        from lib.data.labels import class_names
        from lib.deploy.export import export_onnx
        from lib.deploy.inference import OnnxActionModel
        from lib.engine.checkpoint import load_checkpoint
        from lib.fewshot.gallery import checkpoint_config

        cfg = checkpoint_config(load_checkpoint(checkpoint), checkpoint)
        path = work / "embedding.onnx"
        start = time.perf_counter()
        exported = TorchEmbedder.from_checkpoint(checkpoint, "cpu").model  # export_onnx moves it to the CPU
        export_onnx(exported, cfg, class_names(cfg.data.action_classes, cfg.data.label_map), path)
        export_seconds = time.perf_counter() - start
        start = time.perf_counter()
        onnx_model = OnnxActionModel(path)
        run = time_gallery(onnx_model, examples, "onnxruntime_cpu", time.perf_counter() - start, args.gallery_repeats)
        run["export_seconds"] = round(export_seconds, 2)
        run["max_abs_difference_to_pytorch"] = float(np.abs(run["embeddings"] - runs[0]["embeddings"]).max())
        runs.append(run)
    for run in runs:
        run.pop("embeddings", None)
    return runs


def print_table(results: dict, draws: int):
    chance = 100 / len(NOVEL_ACTIONS)
    shots = " | ".join(f"{k}-shot, {draws} draws" for k in SHOTS)
    print(f"\nnovel classes ({len(NOVEL_ACTIONS)}; chance {chance:.1f}%), top-1 %:")
    print(f"{'features':32} | {'dim':>5} | {'1-shot, named exemplars':23} | {shots}")
    for name in FEATURES:
        r = results[name]
        cells = " | ".join(f"{r['k_shot'][str(k)]['mean']:6.2f} ± {r['k_shot'][str(k)]['std']:5.2f}".ljust(17)
                           for k in SHOTS)
        print(f"{LABELS[name]:32} | {r['dim']:5d} | {r['one_shot_named']['top1']:23.2f} | {cells}")


def print_galleries(runs: list[dict]):
    print(f"\n{'gallery build':16} | {'examples':>8} | {'load s':>6} | {'cold s':>7} | {'warm s':>7} | "
          f"{'warm ms/example':>15} | {'model ms/example':>16} | {'CPU s of other processes':>24}")
    for run in runs:
        print(f"{run['engine']:16} | {run['examples']:8d} | {run['load_seconds']:6.2f} | "
              f"{run['cold_seconds']:7.3f} | {run['warm_seconds']:7.3f} | {run['warm_ms_per_example']:15.2f} | "
              f"{run['model_ms_per_example']:16.2f} | {run['other_cpu_seconds']:24.1f}")
    onnx = next((r for r in runs if r["engine"] == "onnxruntime_cpu"), None)
    if onnx:
        print(f"ONNX export {onnx['export_seconds']:.1f} s; its embeddings differ from PyTorch's by at most "
              f"{onnx['max_abs_difference_to_pytorch']:.2e}")


def parameter_count(checkpoint: Path) -> int:
    from lib.engine.checkpoint import load_checkpoint

    return sum(v.numel() for v in load_checkpoint(checkpoint)["model"].values() if torch.is_tensor(v))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="few samples, one epoch, 3 draws (a smoke run)")
    p.add_argument("--num-samples", type=int, default=None,
                   help="balanced samples of the pickle (default 4800: 40 a class; --quick 720)")
    p.add_argument("--epochs", type=int, default=None, help="epochs of both trainings (default 10; --quick 1)")
    p.add_argument("--draws", type=int, default=None, help="random draws per k-shot (default 10; --quick 3)")
    p.add_argument("--seed", type=int, default=0, help="seed of the pickle, the trainings and the draws")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N: training and features "
                                                     "(the gallery timing is on the CPU)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for both trainings, repeatable (e.g. a bigger model on CUDA)")
    p.add_argument("--gallery-per-class", type=int, default=None,
                   help="keypoint files per novel class in the timed gallery (default 5; --quick 2)")
    p.add_argument("--gallery-repeats", type=int, default=None,
                   help="warm gallery builds and model passes timed (median; default 3, --quick 1)")
    p.add_argument("--gallery-device", default="cpu", help="device of the PyTorch gallery timing (default cpu)")
    p.add_argument("--no-onnx", action="store_true", help="skip the ONNX export and its gallery timing")
    p.add_argument("--work", type=Path, default=None, help="working folder (default a fresh one under /tmp)")
    p.add_argument("--out", type=Path, default=None,
                   help="JSON file (default benchmarks/results/fewshot_<device>.json; --quick writes only to --out)")
    args = p.parse_args()
    quick = args.quick
    args.num_samples = args.num_samples or (720 if quick else 4800)
    args.epochs = args.epochs or (1 if quick else 10)
    args.draws = args.draws or (3 if quick else 10)
    args.gallery_per_class = args.gallery_per_class or (2 if quick else 5)
    args.gallery_repeats = args.gallery_repeats or (1 if quick else 3)
    if quick:
        args.overrides = ["num_workers=0"] + args.overrides
    from lib.engine.runtime import pick_device

    device = pick_device(args.device)
    out = out_path(args.out, quick, f"fewshot_{device.type}.json")
    work = args.work or Path(f"/tmp/bench_fewshot_{os.getpid()}")
    seconds = {}
    result = {"command": " ".join(["python", "benchmarks/bench_fewshot.py"] + sys.argv[1:]),
              "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "work": str(work)}
    start = time.perf_counter()

    with phase(seconds, "data"):
        data, pickle_path = write_data(work, args.num_samples, args.seed)
    print(f"wrote {pickle_path}: {len(data['annotations'])} samples in {seconds['data']:.1f} s", flush=True)
    runs = {"embedding": work / "embedding", "classifier": work / "classifier"}
    trainings = {}
    with phase(seconds, "train_embedding"):
        trainings["embedding"] = train("embed", runs["embedding"], pickle_path, args)
    with phase(seconds, "train_classifier"):
        trainings["classifier"] = train("class", runs["classifier"], pickle_path, args)
    checkpoints = {"embedding": runs["embedding"] / "best_epoch.bin",
                   "classifier": runs["classifier"] / "latest_epoch.bin"}
    cfg = {name: run_config(folder) for name, folder in runs.items()}

    from lib.engine.evaluate import clip_embeddings
    features = {}
    with phase(seconds, "features_embedding"):
        features["embedding"], labels, dataset = model_features(cfg["embedding"], checkpoints["embedding"], device,
                                                                clip_embeddings)
    with phase(seconds, "features_classifier"):
        features["classifier"], class_labels, _ = model_features(cfg["classifier"], checkpoints["classifier"],
                                                                 device, pooled_features)
    with phase(seconds, "features_raw"):
        features["raw"] = raw_features(dataset)
    assert np.array_equal(labels, class_labels)
    with phase(seconds, "matching"):
        results = {name: matching(cfg["embedding"], features[name], labels, dataset.frame_dirs, args.draws, args.seed)
                   for name in FEATURES}
    with phase(seconds, "gallery"):
        gallery = galleries(data, checkpoints["embedding"], work, args)
    result["seconds_total"] = round(time.perf_counter() - start, 1)

    m = cfg["embedding"].model
    split_sizes = {split: int(len(dataset.store.split_indices(split)))
                   for split in ("oneshot_train", "oneshot_val", "oneshot_test")}
    result.update({
        "settings": {"preset": PRESET, "num_samples": args.num_samples, "samples_in_pickle": len(data["annotations"]),
                     "split_sizes": split_sizes, "epochs": args.epochs, "draws": args.draws, "seed": args.seed,
                     "device": str(device), "overrides": args.overrides, "config": CONFIG,
                     "gallery_per_class": args.gallery_per_class, "gallery_repeats": args.gallery_repeats,
                     "gallery_device": args.gallery_device,
                     "checkpoints": {name: str(path) for name, path in checkpoints.items()}},
        "model": {"dim_rep": m.dim_rep, "depth": m.depth, "num_heads": m.num_heads, "hidden_dim": m.hidden_dim,
                  "embed_dim": m.embed_dim, "clip_len": cfg["embedding"].data.clip_len,
                  "parameters": {name: parameter_count(path) for name, path in checkpoints.items()}},
        "machine": machine_info(threads=torch.get_num_threads(), device=str(device),
                                gpu=torch.cuda.get_device_name(device) if device.type == "cuda" else None),
        "phase_seconds": seconds,
        "trainings": {name: dict(t, checkpoint=str(checkpoints[name])) for name, t in trainings.items()},
        "embedding_best_epoch": trainings["embedding"]["epochs"][-1]["best_epoch"],
        "chance_top1": 100 / len(NOVEL_ACTIONS),
        "results": results,
        "gallery": gallery,
    })
    print_table(results, args.draws)
    print_galleries(gallery)
    print("\nseconds: " + ", ".join(f"{name} {s:.1f}" for name, s in seconds.items())
          + f"; total {result['seconds_total']:.1f}")
    write_result(result, out)


if __name__ == "__main__":
    main()
