"""vis_action_attn.py end to end on a tiny synthetic dataset and a tiny model with random weights: the
seed command as a real process and in-process, the figures it writes (names, pixel sizes, not blank),
the raw maps of --attn-save, the --head / --frame / --person / --per-class choices, version 1, and bad
input as one-line errors."""
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from matplotlib.image import imread

import vis_action_attn
from lib.cli import build_parser, config_from_args, run_main
from lib.data import synthetic
from lib.data.dataset import ActionDataset
from lib.data.labels import class_names
from lib.data.pyskl import load_store
from lib.model.action import build_model
from lib.vis import attention as vis

ROOT = Path(__file__).resolve().parents[1]
LAYERS, HEADS, FRAMES, V = 2, 2, 8, 17
# The seed's command (README-SEED.md, 'Heatmap Visualization'), without --evaluate.
SEED_ARGS = ["--config", "configs/action/train_NTU60_xsub_small.yaml",
             "--hyper_cfg", "hyper_config/method2/manual_joint_label1.yaml",
             "--hyper_relation_bias", "uniform", "--version", "2"]



def tiny_overrides(data_root: Path, dataset: str) -> list[str]:
    sets = [f"data_root={data_root}", f"dataset={dataset}", "dim_rep=16", f"depth={LAYERS}", f"num_heads={HEADS}",
            f"clip_len={FRAMES}", f"maxlen={FRAMES}", "hidden_dim=32", "num_workers=0", "device=cpu"]
    return [arg for s in sets for arg in ("--set", s)]


def random_checkpoint(args: list[str], path: Path) -> Path:
    """A checkpoint of the model these arguments build, with weights far from the (near-uniform) init."""
    torch.manual_seed(0)
    model = build_model(config_from_args(build_parser("test").parse_args(args)))
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.5)
    torch.save({"model": model.state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("vis")
    data = synthetic.generate("demo", seed=0, num_samples=40)
    synthetic.write_pickle(data, root / "vis_demo.pkl")
    # The same data restricted to two classes, for --per-class.
    keep = sorted({a["label"] for a in data["annotations"]})[:2]
    names = {a["frame_dir"] for a in data["annotations"] if a["label"] in keep}
    synthetic.write_pickle({"split": {k: [n for n in v if n in names] for k, v in data["split"].items()},
                            "annotations": [a for a in data["annotations"] if a["frame_dir"] in names]},
                           root / "vis_two.pkl")
    overrides = tiny_overrides(root, "vis_demo")
    args = SEED_ARGS + overrides
    v1_args = [a if a != "2" else "1" for a in SEED_ARGS] + overrides
    cfg = config_from_args(build_parser("test").parse_args(args))
    store = load_store(root / "vis_demo.pkl")  # packs the cache once, before any run
    load_store(root / "vis_two.pkl")
    return SimpleNamespace(
        root=root, args=args, v1_args=v1_args, cfg=cfg, overrides=overrides,
        dataset=ActionDataset(store, cfg.data, train=False),
        names=class_names(60),
        ckpt=random_checkpoint(args, root / "v2.pt"), v1_ckpt=random_checkpoint(v1_args, root / "v1.pt"))


def run_process(args: list[str]):
    return subprocess.run([sys.executable, "vis_action_attn.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env=dict(os.environ, OMP_NUM_THREADS="1"))


@pytest.fixture(scope="module")
def seed_run(env):
    """The seed command verbatim (plus the tiny-model overrides, --attn-dir and --attn-save), as a process."""
    out = env.root / "seed_out"
    result = run_process(env.args + ["--evaluate", str(env.ckpt), "--attn-dir", str(out), "--attn-save"])
    assert result.returncode == 0, result.stderr
    return SimpleNamespace(result=result, folder=out / f"00000_{env.dataset.frame_dirs[0]}")


def run_in_process(argv: list[str], capsys) -> list[str]:
    assert vis_action_attn.main(argv) is None
    return capsys.readouterr().out.strip().splitlines()


def expected_pngs(version: int = 2) -> dict[str, tuple]:
    """File name -> (width, height) in pixels."""
    files = {"sheet.png": vis.sheet_size_px(LAYERS, version == 2)}
    for i in range(LAYERS):
        files.update({f"joint_layer{i}.png": vis.MAP_PX, f"temporal_layer{i}.png": vis.MAP_PX,
                      f"skeleton_layer{i}.png": vis.SKELETON_PX})
        if version == 2:
            files[f"hyperedge_layer{i}.png"] = vis.MAP_PX
    if version == 2:
        files["hyperedges.png"] = vis.MEMBERSHIP_PX
    return files


def read_png(path: Path) -> np.ndarray:
    return imread(path)[..., :3]  # [H, W, 3] in 0..1


def check_pngs(folder: Path, version: int = 2):
    expected = expected_pngs(version)
    assert sorted(p.name for p in folder.glob("*.png")) == sorted(expected)
    for name, (width, height) in expected.items():
        image = read_png(folder / name)
        assert image.shape == (height, width, 3), name
        assert image.var() > 1e-3, f"{name} is blank"


def heatmap_area(image: np.ndarray) -> np.ndarray:
    """The inside of the axes of a single-map PNG (fixed margins), without labels or colorbar."""
    m, pad = vis.SINGLE, 4
    return image[m.top + pad:image.shape[0] - m.bottom - pad, m.left + pad:image.shape[1] - m.right - pad]


def test_seed_command_as_a_process_writes_every_figure(env, seed_run):
    lines = seed_run.result.stdout.strip().splitlines()
    clip, label = env.dataset[0]
    assert len(lines) == 1
    assert env.dataset.frame_dirs[0] in lines[0] and str(seed_run.folder) in lines[0]
    assert lines[0].split()[0] == "0" and f"{env.names[label]} -> " in lines[0]
    check_pngs(seed_run.folder)


def test_attn_save_writes_the_raw_maps(env, seed_run):
    saved = np.load(seed_run.folder / "attention.npz")
    assert saved["joint"].shape == (LAYERS, HEADS, FRAMES, V, V)
    assert saved["hyperedge"].shape == (LAYERS, HEADS, FRAMES, V, V)
    assert saved["temporal"].shape == (LAYERS, HEADS, V, FRAMES, FRAMES)
    for key in ("joint", "hyperedge", "temporal"):
        np.testing.assert_allclose(saved[key].sum(-1), 1.0, atol=1e-5)
        assert saved[key].min() >= 0
    assert saved["joint"].std() > 0.01  # the random weights give maps far from uniform
    clip, label = env.dataset[0]
    np.testing.assert_array_equal(saved["clip"], clip)
    assert saved["clip"].shape == (2, FRAMES, V, 3)
    assert int(saved["label"]) == label and str(saved["frame_dir"]) == env.dataset.frame_dirs[0]
    probabilities = saved["probabilities"]
    assert probabilities.shape == (60,) and abs(probabilities.sum() - 1) < 1e-5
    assert int(saved["predicted"]) == probabilities.argmax()
    assert f"{env.names[label]} -> {env.names[int(saved['predicted'])]}" in seed_run.result.stdout


def test_in_process_run_by_name_for_the_second_person(env, tmp_path, capsys):
    index = next(i for i in range(len(env.dataset)) if env.dataset[i][0][1, ..., 2].any())  # two people
    name = env.dataset.frame_dirs[index]
    lines = run_in_process(env.args + ["--evaluate", str(env.ckpt), "--attn-dir", str(tmp_path), "--attn-save",
                                       "--person", "1", "--samples", name, str(index)], capsys)
    assert len(lines) == 1 and lines[0].split()[:2] == [str(index), name]
    (folder,) = tmp_path.iterdir()
    assert folder.name == f"{index:05d}_{name}"
    check_pngs(folder)
    saved = np.load(folder / "attention.npz")
    assert int(saved["person"]) == 1 and saved["joint"].shape == (LAYERS, HEADS, FRAMES, V, V)


def test_person_maps_follow_the_person_major_layout():
    persons, layers = 2, 3
    rows_spatial = torch.arange(persons * FRAMES, dtype=torch.float32)  # (n*M + m)*T + t with n = 0
    rows_temporal = torch.arange(persons * V, dtype=torch.float32)  # (n*M + m)*V + v
    maps = [{"joint": rows_spatial.view(-1, 1, 1, 1).expand(-1, HEADS, V, V) + layer,
             "hyperedge": None,
             "temporal": rows_temporal.view(-1, 1, 1, 1).expand(-1, HEADS, FRAMES, FRAMES) + layer}
            for layer in range(layers)]
    for person in range(persons):
        out = vis.person_maps(maps, person, FRAMES)
        assert sorted(out) == ["joint", "temporal"]
        assert out["joint"].shape == (layers, HEADS, FRAMES, V, V)
        assert out["temporal"].shape == (layers, HEADS, V, FRAMES, FRAMES)
        for layer in range(layers):
            for t in (0, FRAMES - 1):
                assert np.all(out["joint"][layer, :, t] == person * FRAMES + t + layer)
            for v in (0, V - 1):
                assert np.all(out["temporal"][layer, :, v] == person * V + v + layer)


def test_head_and_frame_choices_change_the_figures(env, seed_run, tmp_path, capsys):
    run_in_process(env.args + ["--evaluate", str(env.ckpt), "--attn-dir", str(tmp_path), "--attn-save",
                               "--head", "1", "--frame", "3"], capsys)
    folder = tmp_path / seed_run.folder.name
    check_pngs(folder)
    for name in ("joint_layer0.png", "hyperedge_layer1.png", "temporal_layer0.png", "skeleton_layer1.png"):
        chosen, mean = read_png(folder / name), read_png(seed_run.folder / name)
        assert not np.array_equal(heatmap_area(chosen), heatmap_area(mean)), name
    # The raw maps do not depend on the choices, and in-process gives what the process gave.
    raw, process_raw = np.load(folder / "attention.npz"), np.load(seed_run.folder / "attention.npz")
    for key in ("joint", "hyperedge", "temporal", "probabilities"):
        np.testing.assert_allclose(raw[key], process_raw[key], atol=1e-6)
    # What is drawn: the chosen slices of the raw maps, which differ from the means.
    np.testing.assert_allclose(vis.reduce_spatial(raw["joint"], 1, 3), raw["joint"][:, 1, 3])
    np.testing.assert_allclose(vis.reduce_spatial(raw["joint"]), raw["joint"].mean(axis=(1, 2)), rtol=1e-6)
    np.testing.assert_allclose(vis.reduce_temporal(raw["temporal"], 1), raw["temporal"][:, 1].mean(axis=1))
    assert not np.allclose(vis.reduce_spatial(raw["joint"], 1, 3), vis.reduce_spatial(raw["joint"]))
    np.testing.assert_allclose(vis.received_attention(raw["joint"][0, 1, 3]).sum(), 1.0, atol=1e-5)


def test_version_1_has_no_hyperedge_figures(env, tmp_path, capsys):
    run_in_process(env.v1_args + ["--evaluate", str(env.v1_ckpt), "--attn-dir", str(tmp_path), "--attn-save"], capsys)
    (folder,) = tmp_path.iterdir()
    check_pngs(folder, version=1)
    assert not list(folder.glob("hyperedge*"))
    assert "hyperedge" not in np.load(folder / "attention.npz").files


def test_per_class_takes_the_first_k_samples_of_every_class(env, tmp_path, capsys):
    labels = env.dataset.labels
    for k in (1, 2, 100):
        chosen = vis.select_samples(env.dataset, per_class=k)
        assert len(chosen) == sum(min(k, n) for n in np.bincount(labels) if n)
        for c in np.unique(labels):
            assert [i for i in chosen if labels[i] == c] == list(np.flatnonzero(labels == c)[:k])
    args = [a.replace("dataset=vis_demo", "dataset=vis_two") for a in env.args]
    lines = run_in_process(args + ["--evaluate", str(env.ckpt), "--attn-dir", str(tmp_path), "--per-class", "1"],
                           capsys)
    two = ActionDataset(load_store(env.root / "vis_two.pkl"), env.cfg.data, train=False)
    expected = [int(np.flatnonzero(two.labels == c)[0]) for c in np.unique(two.labels)]
    assert len(expected) == 2 and [int(line.split()[0]) for line in lines] == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{i:05d}_{two.frame_dirs[i]}" for i in expected)


def test_samples_are_indices_or_names_in_order_without_repeats(env):
    names = env.dataset.frame_dirs
    assert vis.select_samples(env.dataset) == [0]
    assert vis.select_samples(env.dataset, ["3", names[1], "3", names[3]]) == [3, 1]


@pytest.mark.parametrize("extra, fragments", [
    ([], ["--evaluate CKPT is required"]),
    (["--samples", "999"], ["sample index 999 is outside 0.."]),
    (["--samples", "-1"], ["sample index -1 is outside 0.."]),
    (["--samples", "S999C001P001R001A001"], ["'S999C001P001R001A001' is not in xsub_val", "index 0.."]),
    (["--head", "2"], ["--head must be in 0..1"]),
    (["--frame", "8"], ["--frame must be in 0..7"]),
    (["--person", "2"], ["--person must be 0 or 1"]),
    (["--per-class", "1", "--samples", "0"], ["cannot be combined"]),
    (["--per-class", "0"], ["--per-class must be at least 1"]),
    (["--evaluate", "absent.pt"], ["checkpoint not found: absent.pt"]),
    (["--evaluate", "V1"], ["does not fit this model"]),
])
def test_bad_input_is_a_one_line_error(env, tmp_path, capsys, extra, fragments):
    if "--evaluate" not in extra and extra:
        extra = extra + ["--evaluate", str(env.ckpt)]
    extra = [str(env.v1_ckpt) if a == "V1" else a for a in extra]
    assert run_main(vis_action_attn.main, env.args + ["--attn-dir", str(tmp_path / "out"), *extra]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert not (tmp_path / "out").exists()


def test_bad_input_in_a_real_process(env, tmp_path):
    result = run_process(env.args + ["--evaluate", str(env.ckpt), "--attn-dir", str(tmp_path), "--head", "5"])
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == ["error: --head must be in 0..1 (model.num_heads is 2), got 5"]
