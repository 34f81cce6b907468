"""Galleries of your own classes, end to end through the real commands: an embedding model trained on a
small synthetic pickle, class folders of keypoint files and videos, `python -m lib.fewshot.gallery`, the
ONNX export of the embedding, `infer_action.py --gallery`, `evaluate_action.py` on an embedding checkpoint
and with `--gallery`, and the one-line errors of a gallery."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import evaluate_action
import train_action
from lib.cli import run_main
from lib.data import synthetic
from lib.data.keypoint_files import Keypoints, write_npz
from lib.data.labels import class_names
from lib.data.pyskl import load_store
from lib.fewshot import gallery as gallery_cli
from lib.fewshot.gallery import Gallery, TorchEmbedder, probe_clip
from lib.video.synthetic_video import write_video
from tests.video_helpers import load_script

ROOT = Path(__file__).resolve().parents[1]
CONFIG = "configs/oneshot/oneshot_demo.yaml"
NAMES = class_names(60)
# The demo's hand-written actions differ a lot; a tiny model learns to tell them apart in a few epochs.
GALLERY_LABELS = (22, 26, 7)  # hand waving, jump up, sitting down (all three in the demo preset)
OTHER_LABEL = 9  # clapping: not in the gallery
TINY = ["dim_rep=16", "depth=1", "num_heads=2", "clip_len=16", "maxlen=16", "hidden_dim=64", "embed_dim=16",
        "num_workers=0", "device=cpu", "batch_size=8", "clips_per_class=2", "lr_backbone=0.003", "lr_head=0.003"]


def sets(*assignments) -> list[str]:
    return [arg for a in assignments for arg in ("--set", a)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """An embedding model trained for 6 epochs on the demo preset's cross-subject split (10 actions)."""
    root = tmp_path_factory.mktemp("fewshot")
    data = synthetic.generate("demo", seed=1, num_samples=300)
    synthetic.write_pickle(data, root / "demo_small.pkl")
    load_store(root / "demo_small.pkl")
    overrides = sets(f"data_root={root}", "dataset=demo_small", "data_split=xsub", "action_classes=60", *TINY)
    status = run_main(train_action.main, ["--config", CONFIG, "-c", str(root / "run"), *overrides,
                                          *sets("epochs=6")])
    assert status == 0
    return {"root": root, "data": data, "overrides": overrides, "ckpt": root / "run" / "best_epoch.bin"}


def val_annotations(trained, label: int) -> list[dict]:
    val = set(trained["data"]["split"]["xsub_val"])
    return [a for a in trained["data"]["annotations"] if a["label"] == label and a["frame_dir"] in val]


def write_examples(folder: Path, annotations: list[dict]):
    folder.mkdir(parents=True, exist_ok=True)
    for ann in annotations:
        write_npz(folder / f"{ann['frame_dir']}.npz", Keypoints(ann["keypoint"], ann["keypoint_score"], ann["img_shape"]),
                  ann["frame_dir"])


@pytest.fixture(scope="module")
def built(trained) -> dict:
    """Class folders (3 examples each as keypoint files, one class as videos), the gallery, the ONNX model."""
    root = trained["root"]
    examples, queries = root / "examples", {}
    for label in GALLERY_LABELS:
        anns = val_annotations(trained, label)
        name = NAMES[label]
        if label == GALLERY_LABELS[-1]:  # this class's examples are videos, through the stand-in estimator
            (examples / name).mkdir(parents=True)
            index = {a["frame_dir"]: i for i, a in enumerate(trained["data"]["annotations"])}
            for ann in anns[:3]:
                write_video(ann, index[ann["frame_dir"]], examples / name / f"{ann['frame_dir']}.mp4", height=120)
        else:
            write_examples(examples / name, anns[:3])
        queries[name] = anns[3:7]
        assert len(queries[name]) == 4
    gallery_path = root / "gallery.npz"
    status = run_main(gallery_cli.main, ["--checkpoint", str(trained["ckpt"]), "--examples", str(examples),
                                         "--out", str(gallery_path), "--backend", f"stand-in:{root / 'demo_small.pkl'}"])
    assert status == 0
    onnx_path = root / "embed.onnx"
    deployment = load_script("deployment/deployment_action.py")
    with torch.no_grad():
        assert run_main(deployment.main, ["--config", CONFIG, "--evaluate", str(trained["ckpt"]),
                                          "--deployment", str(onnx_path), *trained["overrides"]]) == 0
    return {"examples": examples, "queries": queries, "gallery": gallery_path, "onnx": onnx_path}


def infer(built, keypoint_file: Path, capsys, *extra) -> dict:
    infer_action = load_script("deployment/infer_action.py")
    capsys.readouterr()
    status = run_main(infer_action.main, ["--onnx", str(built["onnx"]), "--gallery", str(built["gallery"]),
                                          "--keypoints", str(keypoint_file), "--json-out", *extra])
    out = capsys.readouterr().out
    assert status == 0, out
    return json.loads(out)["predictions"][0]


def test_gallery_file_holds_every_example_and_a_threshold_between_its_similarities(built, trained):
    gallery = Gallery.load(built["gallery"])
    assert gallery.class_names == sorted(NAMES[label] for label in GALLERY_LABELS)
    assert np.bincount(gallery.labels).tolist() == [3, 3, 3]
    assert sum(source.endswith(".mp4") for source in gallery.sources) == 3
    assert np.allclose(np.linalg.norm(gallery.embeddings, axis=1), 1, atol=1e-5)
    embedder = TorchEmbedder.from_checkpoint(trained["ckpt"])
    assert np.allclose(embedder.embed(probe_clip(16))[0], gallery.probe, atol=1e-5)
    # a video example embeds as its keypoints do (the stand-in estimator returns the pickle's keypoints)
    video_source = next(s for s in gallery.sources if s.endswith(".mp4"))
    ann = next(a for a in trained["data"]["annotations"] if a["frame_dir"] == Path(video_source).stem)
    direct = embedder.embed(embedder.settings.clip(ann["keypoint"], ann["keypoint_score"], ann["img_shape"])[None])[0]
    assert float(direct @ gallery.embeddings[gallery.sources.index(video_source)]) > 0.99


def test_infer_names_held_out_examples_of_gallery_classes_and_unknown_for_another(built, trained, capsys, tmp_path):
    right, total = 0, 0
    for name, anns in built["queries"].items():
        write_examples(tmp_path / name, anns)
        for ann in anns:
            result = infer(built, tmp_path / name / f"{ann['frame_dir']}.npz", capsys, "--threshold", "-1")
            right += result["class"] == name
            total += 1
            assert result["top"][0]["name"] == result["class"]
            assert len(result["similarities"]) == 3
    assert right >= 0.75 * total, f"{right} of {total} held-out clips named right"

    other = val_annotations(trained, OTHER_LABEL)[:4]
    assert len(other) == 4
    write_examples(tmp_path / "other", other)
    gallery = Gallery.load(built["gallery"])
    answers = [infer(built, tmp_path / "other" / f"{a['frame_dir']}.npz", capsys) for a in other]
    for answer in answers:  # the suggested threshold is what decides, in both directions
        assert (answer["class"] == "unknown") == (answer["top"][0]["similarity"] < gallery.threshold)
    assert sum(a["class"] == "unknown" for a in answers) >= 3
    never = infer(built, tmp_path / "other" / f"{other[0]['frame_dir']}.npz", capsys, "--threshold", "-1")
    always = infer(built, tmp_path / "other" / f"{other[0]['frame_dir']}.npz", capsys, "--threshold", "1.01")
    assert never["class"] != "unknown" and always["class"] == "unknown"


def test_onnx_embedding_equals_pytorch(built, trained):
    from lib.deploy.inference import OnnxActionModel

    onnx_model = OnnxActionModel(built["onnx"])
    embedder = TorchEmbedder.from_checkpoint(trained["ckpt"])
    assert onnx_model.task == "embed" and onnx_model.settings == embedder.settings
    clips = np.stack([embedder.settings.clip(a["keypoint"], a["keypoint_score"], a["img_shape"])
                      for a in trained["data"]["annotations"][:6]])
    ours, theirs = embedder.embed(clips), onnx_model.embed(clips)
    assert theirs.shape == (6, 16)
    assert np.abs(ours - theirs).max() < 1e-5
    Gallery.load(built["gallery"]).check_model(onnx_model)  # the ONNX model passes the gallery's model check


def test_gallery_built_from_onnx_equals_the_one_from_the_checkpoint(built, tmp_path):
    out = tmp_path / "from_onnx.npz"
    assert run_main(gallery_cli.main, ["--onnx", str(built["onnx"]), "--examples", str(built["examples"]),
                                       "--out", str(out), "--backend",
                                       f"stand-in:{built['gallery'].parent / 'demo_small.pkl'}"]) == 0
    a, b = Gallery.load(built["gallery"]), Gallery.load(out)
    assert a.class_names == b.class_names and np.abs(a.embeddings - b.embeddings).max() < 1e-5
    assert abs(a.threshold - b.threshold) < 1e-3


def test_evaluate_embedding_checkpoint_and_gallery(built, trained, tmp_path):
    out = tmp_path / "oneshot_eval"
    assert run_main(evaluate_action.main, ["--config", CONFIG, "--evaluate", str(trained["ckpt"]),
                                           "--out-dir", str(out), *trained["overrides"]]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    predictions = np.load(out / "predictions.npz")
    labels, predicted = predictions["label"], predictions["predicted"]
    assert metrics["top1"] == pytest.approx(100 * np.mean(labels == predicted))
    assert metrics["queries"] == len(labels) and metrics["classes"] == 10
    exemplars = set(metrics["exemplars"].values())
    assert not exemplars & set(predictions["frame_dir"].tolist())  # exemplars are never queries
    assert [c["k"] for c in metrics["k_shot"]] == [1, 2, 5] and all(len(c["draws"]) == 10 for c in metrics["k_shot"])
    assert (out / "confusion.png").stat().st_size > 0 and (out / "per_class.csv").read_text().count("\n") == 11

    out = tmp_path / "gallery_eval"
    assert run_main(evaluate_action.main, ["--config", CONFIG, "--gallery", str(built["gallery"]),
                                           "--out-dir", str(out), *trained["overrides"]]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    predictions = np.load(out / "predictions.npz")
    names = [NAMES[label] for label in predictions["label"]]
    known = np.array([name in predictions["class_names"] for name in names])
    assert metrics["known_clips"] == known.sum() and metrics["other_clips"] == (~known).sum()
    examples = {Path(source).stem for source in Gallery.load(built["gallery"]).sources}
    assert metrics["gallery_examples_left_out"] == len(examples) == 9
    assert not examples & set(predictions["frame_dir"].tolist())
    truth = np.array([list(predictions["class_names"]).index(n) if k else -1 for n, k in zip(names, known)])
    assert metrics["top1"] == pytest.approx(100 * np.mean(predictions["predicted"][known] == truth[known]))
    assert metrics["other_called_unknown"] == pytest.approx(100 * np.mean(predictions["predicted"][~known] == -1))


def run_gallery(argv, capsys) -> tuple[int, str]:
    capsys.readouterr()
    status = run_main(gallery_cli.main, [str(a) for a in argv])
    return status, capsys.readouterr().err


def test_gallery_errors_are_one_line(built, trained, tmp_path, capsys):
    ckpt = trained["ckpt"]
    examples = tmp_path / "examples"
    write_examples(examples / "wave", val_annotations(trained, GALLERY_LABELS[0])[:1])  # one example: fine
    (examples / "empty").mkdir()
    status, err = run_gallery(["--checkpoint", ckpt, "--examples", examples, "--out", tmp_path / "g.npz"], capsys)
    assert status == 2 and "class folder" in err and "empty" in err and "no examples" in err
    assert err.count("\n") == 1

    shutil.rmtree(examples / "empty")
    status, err = run_gallery(["--checkpoint", ckpt, "--examples", examples, "--out", tmp_path / "g.npz"], capsys)
    assert status == 0, err
    assert Gallery.load(tmp_path / "g.npz").labels.tolist() == [0]

    status, err = run_gallery(["--checkpoint", ckpt, "--examples", tmp_path / "nothing", "--out", tmp_path / "x.npz"],
                              capsys)
    assert status == 2 and "is not a folder" in err

    # a keypoint file left empty by a crashed pose extraction
    (examples / "wave" / "crashed.npz").write_bytes(b"")
    status, err = run_gallery(["--checkpoint", ckpt, "--examples", examples, "--out", tmp_path / "g3.npz"], capsys)
    assert status == 2 and "crashed.npz: the file is empty" in err and err.count("\n") == 1, err
    (examples / "wave" / "crashed.npz").unlink()

    # a video in which nobody was detected
    blank = dict(val_annotations(trained, OTHER_LABEL)[0])
    blank["keypoint_score"] = np.zeros_like(blank["keypoint_score"])
    blank_pickle = tmp_path / "blank.pkl"
    synthetic.write_pickle({"split": {}, "annotations": [blank]}, blank_pickle)
    write_video(blank, 0, examples / "wave" / "nobody.mp4", height=120)
    status, err = run_gallery(["--checkpoint", ckpt, "--examples", examples, "--out", tmp_path / "g2.npz",
                               "--backend", f"stand-in:{blank_pickle}"], capsys)
    assert status == 2 and "nobody.mp4" in err and "no person was detected" in err and err.count("\n") == 1


def test_a_gallery_refuses_another_model(built, trained, tmp_path, capsys):
    other_run = tmp_path / "other"
    assert run_main(train_action.main, ["--config", CONFIG, "-c", str(other_run), *trained["overrides"],
                                        *sets("epochs=1", "seed=5", "quickdebug=true")]) == 0
    capsys.readouterr()
    status = run_main(evaluate_action.main, ["--config", CONFIG, "--gallery", str(built["gallery"]), "--evaluate",
                                             str(other_run / "latest_epoch.bin"), *trained["overrides"]])
    err = capsys.readouterr().err
    assert status == 2 and "built with another model" in err and err.count("\n") == 1

    classifier = tmp_path / "classifier"
    assert run_main(train_action.main, ["--config", CONFIG, "-c", str(classifier), *trained["overrides"],
                                        *sets("epochs=1", "quickdebug=true", "model_version=class")]) == 0
    status, err = run_gallery(["--checkpoint", classifier / "latest_epoch.bin", "--examples", built["examples"],
                               "--out", tmp_path / "g.npz"], capsys)
    assert status == 2 and "classification model" in err


def test_infer_with_a_gallery_on_a_video_renders_and_streams(built, trained, capsys, tmp_path):
    ann = val_annotations(trained, GALLERY_LABELS[1])[3]
    index = [a["frame_dir"] for a in trained["data"]["annotations"]].index(ann["frame_dir"])
    video = tmp_path / f"{ann['frame_dir']}.mp4"
    write_video(ann, index, video, height=120)
    backend = f"stand-in:{trained['root'] / 'demo_small.pkl'}"
    infer_action = load_script("deployment/infer_action.py")
    capsys.readouterr()
    assert run_main(infer_action.main, ["--onnx", str(built["onnx"]), "--gallery", str(built["gallery"]),
                                        "--video", str(video), "--backend", backend, "--window", "16", "--stride", "8",
                                        "--render", str(tmp_path / "out.mp4"), "--json-out"]) == 0
    result = json.loads(capsys.readouterr().out)
    windows = result["predictions"]
    assert len(windows) >= 2 and all(w["class"] in Gallery.load(built["gallery"]).class_names + ["unknown"]
                                     for w in windows)
    assert result["gallery"] == str(built["gallery"]) and (tmp_path / "out.mp4").stat().st_size > 0
    assert (tmp_path / "out_timeline.png").stat().st_size > 0

    assert run_main(infer_action.main, ["--onnx", str(built["onnx"]), "--gallery", str(built["gallery"]),
                                        "--stream", str(video), "--backend", backend, "--window", "16",
                                        "--stride", "8", "--json-out"]) == 0
    streamed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [w["class"] for w in streamed] == [w["class"] for w in windows[:len(streamed)]]
    assert all("latency_ms" in w and len(w["similarities"]) == 3 for w in streamed)

    # per person: each person's windows name a gallery class or "unknown", and the segments do too
    out = tmp_path / "persons" / "out.mp4"
    assert run_main(infer_action.main, ["--onnx", str(built["onnx"]), "--gallery", str(built["gallery"]),
                                        "--video", str(video), "--backend", backend, "--window", "16", "--stride", "8",
                                        "--per-person", "--render", str(out), "--json-out"]) == 0
    persons = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    names = Gallery.load(built["gallery"]).class_names + ["unknown"]
    assert persons and all(p["class"] in names and "track" in p for p in persons)
    segments = json.loads(out.with_name("out_segments.json").read_text())["segments"]
    assert segments and all(s["class"] in names and "mean_similarity" in s for s in segments)


def test_infer_needs_a_gallery_for_an_embedding_model_and_an_embedding_model_for_a_gallery(built, capsys, tmp_path):
    infer_action = load_script("deployment/infer_action.py")
    keypoints = next(built["examples"].glob("*/*.npz"))
    capsys.readouterr()
    assert run_main(infer_action.main, ["--onnx", str(built["onnx"]), "--keypoints", str(keypoints)]) == 2
    assert "embedding model" in capsys.readouterr().err
