"""vis_action_attn.py end to end on a tiny synthetic dataset and a tiny model with random weights: the
seed command as a real process and in-process, the figures it writes (names, pixel sizes, not blank),
the raw maps of --attn-save, the --head / --frame / --person / --per-class choices, version 1, and bad
input as one-line errors. Also: no text of any picture (these figures and the confusion.png of evaluations)
is clipped at an image edge, whatever the length of the class names."""
import csv
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from matplotlib.image import imread
from matplotlib.text import Text

import vis_action_attn
from lib.cli import build_parser, config_from_args, run_main
from lib.data import synthetic
from lib.data.dataset import ActionDataset
from lib.data.labels import class_names
from lib.data.pyskl import load_store
from lib.engine import evaluate
from lib.engine.build import action_model
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
    model = action_model(config_from_args(build_parser("test", "visualise").parse_args(args)))
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
    cfg = config_from_args(build_parser("test", "visualise").parse_args(args))
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


# ---------------------------------------------------------------------------------------------------------
# No text is clipped at an image edge


def drawn_texts(fig) -> list:
    """The non-empty text artists a draw of `fig` renders: figure and axes texts, titles, axis and colorbar
    labels, annotations, and the tick labels of the ticks inside the view limits (an Axis keeps Text
    objects of ticks it does not draw)."""
    fig.canvas.draw()
    undrawn = set()
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            undrawn.update(id(label) for tick in axis.majorTicks + axis.minorTicks
                           for label in (tick.label1, tick.label2))
            lo, hi = sorted(axis.get_view_interval())
            slack = 1e-9 * max(hi - lo, 1.0)
            ticks = (axis.get_major_ticks(len(axis.get_majorticklocs()))
                     + axis.get_minor_ticks(len(axis.get_minorticklocs())))
            undrawn.difference_update(id(label) for tick in ticks if lo - slack <= tick.get_loc() <= hi + slack
                                      for label in (tick.label1, tick.label2))
    return [t for t in fig.findobj(Text) if id(t) not in undrawn and t.get_visible() and t.get_text().strip()]


def assert_no_text_clipped(fig, what: str = "figure"):
    """Every drawn text's window extent lies inside the figure's pixel box (half a pixel of slack)."""
    renderer, box = fig.canvas.get_renderer(), fig.bbox
    texts = drawn_texts(fig)
    assert texts, f"{what}: no text drawn"
    for text in texts:
        extent = text.get_window_extent(renderer)
        inside = (extent.x0 >= box.x0 - 0.5 and extent.y0 >= box.y0 - 0.5
                  and extent.x1 <= box.x1 + 0.5 and extent.y1 <= box.y1 + 0.5)
        assert inside, f"{what}: {text.get_text()!r} at {extent.extents.round(1)} leaves {box.extents}"


def ntu120_names_longest_first() -> list[str]:
    return sorted(class_names(120), key=len, reverse=True)


@pytest.fixture
def figures(monkeypatch) -> list:
    """Every Figure lib/vis makes while the test runs, in order."""
    made, new_figure = [], vis.new_figure

    def recording(size_px):
        made.append(new_figure(size_px))
        return made[-1]

    monkeypatch.setattr(vis, "new_figure", recording)
    return made


def test_no_text_of_the_written_pngs_is_clipped(env, tmp_path, capsys, figures):
    run_in_process(env.args + ["--evaluate", str(env.ckpt), "--attn-dir", str(tmp_path), "--head", "1"], capsys)
    (folder,) = tmp_path.iterdir()
    check_pngs(folder)
    assert len(figures) == len(expected_pngs())
    for fig in figures:
        size = tuple(int(v) for v in fig.bbox.size)
        assert size in set(expected_pngs().values())
        assert_no_text_clipped(fig, f"figure of {size} px")
    # the sheet, titled with the sample's true and predicted class names
    assert "true: " in figures[-1].texts[0].get_text()


# None: the two longest NTU120 names; 300: names of a custom label map. Version 1 has the narrowest sheet.
@pytest.mark.parametrize("version, name_length", [(1, None), (2, None), (1, 300)])
def test_sheet_title_with_long_class_names_is_not_clipped(env, seed_run, tmp_path, figures, version, name_length):
    """The sheet is titled with the true and predicted class names: the two longest of NTU120 fit at the
    normal size; names of a custom label map of any length are wrapped, never cut."""
    saved = np.load(seed_run.folder / "attention.npz")
    raw = {key: saved[key] for key in ("joint", "temporal", "hyperedge")[:3 if version == 2 else 2]}
    panels = vis.sample_panels(env.cfg, vis.VisOptions(), raw, saved["clip"])
    true, predicted = ntu120_names_longest_first()[:2]
    if name_length:
        true = predicted = " ".join(["unusually-long-class-name"] * 20)[:name_length]
    title = (f"{env.dataset.frame_dirs[0]} (validation sample 0, person 0)\n"
             f"true: {true}    predicted: {predicted} (p = 0.99)")
    size = vis.sheet_size_px(LAYERS, version == 2)
    vis.save_sheet(panels, size, title, tmp_path / "sheet.png")
    assert read_png(tmp_path / "sheet.png").shape == (size[1], size[0], 3)
    fig = figures[-1]
    assert_no_text_clipped(fig, f"version {version} sheet")
    (text,) = fig.texts
    assert text.get_text().split() == title.split()  # every word kept, at most re-wrapped
    if name_length is None:
        assert text.get_text() == title and text.get_fontsize() == vis.SINGLE.font + 2
        band = text.get_window_extent(fig.canvas.get_renderer())
        assert band.y0 >= size[1] - vis.SHEET_TITLE_PX  # within its band, above the panels


def test_fit_text_wraps_only_what_does_not_fit():
    fig = vis.new_figure((400, 100))
    text = fig.text(0.5, 0.9, "short", fontsize=11)
    vis.fit_text(text, 380, 80)
    assert text.get_text() == "short" and text.get_fontsize() == 11
    text.set_text("a rather long line of words " * 6)
    vis.fit_text(text, 380, 80)
    assert text.get_fontsize() == 6 and "\n" in text.get_text()
    assert text.get_window_extent(fig.canvas.get_renderer()).width <= 380


@pytest.mark.parametrize("num_classes", [60, 120])
def test_confusion_with_all_classes_names_every_class_in_full(tmp_path, num_classes):
    names = class_names(num_classes)
    rng = np.random.default_rng(num_classes)
    labels = rng.integers(0, num_classes, 300)
    predicted = np.where(rng.random(300) < 0.5, labels, rng.integers(0, num_classes, 300))
    matrix = evaluate.confusion_matrix(predicted, labels, num_classes)
    fig = evaluate.plot_confusion(matrix, names, tmp_path / "confusion.png", "NTU xsub_val: top-1 50.00%",
                                  all_classes=True)
    assert_no_text_clipped(fig, f"confusion of {num_classes} classes")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == [f"{name}  {c}" for c, name in enumerate(names)]
    assert [t.get_text() for t in ax.get_xticklabels()] == [str(c) for c in range(num_classes)]
    height, width = read_png(tmp_path / "confusion.png").shape[:2]
    assert (width, height) == tuple(int(v) for v in fig.bbox.size)


def test_confusion_shows_the_classes_present_with_their_real_ids(tmp_path, monkeypatch):
    """write_evaluation: per_class.csv lists all 120 classes; confusion.png the classes that occur as a true
    label plus those predicted (here the longest NTU120 names, and one predicted class without samples),
    or all 120 with all_classes."""
    names = class_names(120)
    longest = [names.index(name) for name in ntu120_names_longest_first()[:6]]
    truth = np.array(longest[:5] * 4)
    predicted = truth.copy()
    predicted[::3] = longest[5]  # a class with predictions but no samples
    scores = torch.full((len(truth), 120), -5.0)
    scores[torch.arange(len(truth)), torch.from_numpy(predicted)] = 5.0
    metrics = {"top1": 100.0 * float(np.mean(predicted == truth))}
    figures, plot_confusion = {}, evaluate.plot_confusion

    def keeping(*args, **kwargs):  # keeps the figure plot_confusion returns
        figures[kwargs["all_classes"]] = plot_confusion(*args, **kwargs)

    monkeypatch.setattr(evaluate, "plot_confusion", keeping)
    for all_classes in (False, True):
        out = tmp_path / str(all_classes)
        evaluate.write_evaluation(out, metrics, scores, torch.from_numpy(truth), [f"s{i}" for i in range(len(truth))],
                                  names, "NTU120 xsub_val", {}, all_classes=all_classes)
        with open(out / "per_class.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        assert [r["class"] for r in rows] == names
        assert [int(r["samples"]) for r in rows] == [int(np.sum(truth == c)) for c in range(120)]
        assert (out / "confusion.png").is_file()
    shown = sorted(longest)
    subset, full = figures[False], figures[True]
    assert_no_text_clipped(subset, "confusion of the present classes")
    assert_no_text_clipped(full, "confusion of all classes")
    ax = subset.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == [str(c) for c in shown]
    assert [t.get_text() for t in ax.get_yticklabels()] == [f"{names[c]}  {c}" for c in shown]
    assert "6 of 120 classes" in ax.get_title() and "grey rows: no samples" in ax.get_title()
    assert len(full.axes[0].get_yticklabels()) == 120
    image = ax.get_images()[0].get_array()  # the row-normalised shares; the row without samples masked
    row = shown.index(longest[5])
    assert image.mask[row].all() and not image.mask[np.arange(len(shown)) != row].any()
    np.testing.assert_allclose(image.sum(axis=1)[np.arange(len(shown)) != row], 1.0)
