"""Masked motion pretraining (lib/model/masked_motion.py, lib/engine/pretraining.py, pretrain_action.py),
its backbone.bin in finetuning, the linear probe and label_fraction. Tiny models on tiny synthetic pickles
in the real format; the commands run in-process through their `main`, as `python SCRIPT` does."""
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

import pretrain_action
import train_action
from lib.cli import run_main
from lib.config import load_yaml_config
from lib.data import synthetic
from lib.data.dataset import ActionDataset, stratified_share
from lib.data.pyskl import load_store
from lib.engine.build import backbone_settings
from lib.model.backbone import SkeletonBackbone
from lib.model.masked_motion import MaskedMotionModel, joint_motion, masked_loss, motion_aware_mask, pretraining_loss

ROOT = Path(__file__).resolve().parents[1]
HYPER = "hyper_config/method2/manual_joint_label1.yaml"
TINY = ["dim_rep=16", "depth=1", "num_heads=2", "clip_len=8", "maxlen=8", "num_workers=0", "device=cpu",
        "segment=4", "decoder_dim=16", "decoder_depth=1", "decoder_heads=2", "batch_size=8", "drop_path_rate=0.0"]


def sets(*assignments) -> list[str]:
    return [arg for a in assignments for arg in ("--set", a)]


def run(main, argv, monkeypatch) -> int:
    monkeypatch.chdir(ROOT)
    return run_main(main, [str(a) for a in argv])


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    synthetic.write_pickle(synthetic.generate("demo", seed=0, num_samples=120), root / "pre_tiny.pkl")
    load_store(root / "pre_tiny.pkl")
    return root


def pretrain_argv(data: Path, out: Path, *overrides, dataset="pre_tiny"):
    return (["--config", "configs/pretrain/pretrain_demo.yaml", "--checkpoint", out, "--hyper_cfg", HYPER,
             "--hyper_relation_bias", "uniform", "--version", "2"]
            + sets(f"data_root={data}", f"dataset={dataset}", *TINY, *overrides))


def finetune_argv(data: Path, out: Path, *overrides):
    return (["--config", "configs/action/demo_synthetic.yaml", "--hyper_cfg", HYPER, "--hyper_relation_bias",
             "uniform", "--version", "2", "--checkpoint", out]
            + sets(f"data_root={data}", "dataset=pre_tiny", *TINY, "hidden_dim=32", *overrides))


def moving_clip(batch=4, frames=8, moving=range(0, 17, 2)) -> torch.Tensor:
    """[B, T, V, 3]: the joints in `moving` travel, the others stand still; all present."""
    x = torch.zeros(batch, frames, 17, 3)
    x[..., 2] = 1.0
    steps = torch.arange(frames, dtype=torch.float32)[None, :, None]
    for j in moving:
        x[:, :, j, 0] = 0.1 * steps[..., 0] * (1 + torch.rand(batch, 1))
    return x


# ---------------------------------------------------------------------------------------------------------
# The objective


def test_joint_motion_is_the_move_over_the_next_frames_where_the_joint_is_present_at_both_ends():
    x = torch.randn(2, 6, 17, 3)
    x[..., 2] = 1.0
    x[0, 3, 4, 2] = 0.0  # joint 4 absent in frame 3: its moves 1->3 and 3->5 are unknown
    motion, valid = joint_motion(x, 2)
    torch.testing.assert_close(motion[:, :-2], (x[:, 2:, :, :2] - x[:, :-2, :, :2]) * valid[:, :-2, :, None])
    assert not valid[:, -2:].any() and not valid[0, 1, 4] and not valid[0, 3, 4] and valid[0, 2, 4]
    assert int(valid.sum()) == 2 * 4 * 17 - 2


def test_masking_hides_the_configured_share_and_prefers_moving_tokens():
    torch.manual_seed(0)
    x = moving_clip(batch=64, frames=8)
    mask = motion_aware_mask(x, ratio=0.5, segment=4, tau=0.5)  # [B, T, V]
    tokens = mask[:, ::4]  # one frame per token: [B, 2, V]
    assert (mask[:, 1:4] == mask[:, :1]).all() and (mask[:, 5:] == mask[:, 4:5]).all()  # whole segments
    assert (tokens.flatten(1).sum(1) == round(0.5 * 2 * 17)).all()
    moving, still = tokens[..., 0::2].float().mean(), tokens[..., 1::2].float().mean()
    assert moving > 0.7 and still < 0.35, (moving, still)
    uniform = motion_aware_mask(x, ratio=0.5, segment=4, tau=1e6)[:, ::4]  # tau -> infinity: no preference
    assert abs(float(uniform[..., 0::2].float().mean()) - float(uniform[..., 1::2].float().mean())) < 0.1


@pytest.mark.parametrize("centre", [False, True], ids=["motion", "position"])
def test_loss_depends_only_on_hidden_present_targets(centre):
    torch.manual_seed(1)
    x = torch.randn(3, 8, 17, 3)
    x[..., 2] = (torch.rand(3, 8, 17) > 0.2).float()  # some joints absent
    target, valid = joint_motion(x, 4) if not centre else (x[..., :2], x[..., 2] > 0)
    mask = motion_aware_mask(x, 0.6, 4, 0.8)
    predicted = torch.randn(3, 8, 17, 2)
    loss, entries = masked_loss(predicted, target, valid, mask, centre)
    assert entries == int((valid & mask).sum()) * 2 and entries > 0
    changed = target.clone()
    changed[~mask] = 100 * torch.randn_like(changed[~mask])  # targets of visible tokens
    changed[~valid] = 100 * torch.randn_like(changed[~valid])  # targets of absent joints
    judged_nowhere = predicted.clone()
    judged_nowhere[~(mask & valid)] = 7.0  # predictions of visible tokens and absent joints
    torch.testing.assert_close(masked_loss(judged_nowhere, changed, valid, mask, centre)[0], loss)
    hidden_present = tuple((mask & valid).nonzero()[0])
    moved = target.clone()
    moved[hidden_present] += 1.0
    assert not torch.isclose(masked_loss(predicted, moved, valid, mask, centre)[0], loss)


def test_targets_are_normalised_over_the_hidden_entries_of_their_sequence():
    """Moves divided by their root mean square; positions centred on their mean, then divided."""
    x = moving_clip(batch=2, frames=8)
    x[..., 1] = torch.rand(2, 8, 17)
    motion, valid = joint_motion(x, 4)
    present = x[..., 2] > 0
    mask = torch.zeros(2, 8, 17, dtype=torch.bool)
    mask[:, :, :9] = True
    rms = torch.stack([(motion[b][valid[b] & mask[b]] ** 2).mean().sqrt() for b in range(2)])
    ideal = motion / rms[:, None, None, None]
    assert float(masked_loss(ideal, motion, valid, mask)[0]) < 1e-8
    assert float(masked_loss(motion, motion, valid, mask)[0]) > 0.1
    positions = x[..., :2]
    centred = torch.stack([positions[b] - positions[b][mask[b]].mean(0) for b in range(2)])
    rms = torch.stack([(centred[b][mask[b]] ** 2).mean().sqrt() for b in range(2)])
    ideal = centred / rms[:, None, None, None]
    assert float(masked_loss(ideal, positions, present, mask, centre=True)[0]) < 1e-8
    assert float(masked_loss(centred, positions, present, mask, centre=True)[0]) > 0.1
    predicted = torch.cat([ideal, torch.zeros_like(ideal)], dim=-1)  # perfect positions, moves all zero
    loss, sums = pretraining_loss(predicted, x, mask, 4)
    torch.testing.assert_close(loss, torch.tensor(1.0))  # a zero move costs its normalised mean square, 1
    assert sums["position_loss"] < 1e-6 and sums["motion_entries"] == int((valid & mask).sum()) * 2
    assert abs(sums["motion_loss"] / sums["motion_entries"] - 1.0) < 1e-4


def test_backbone_bin_fits_every_finetuning_config(tmp_path):
    """A backbone.bin of each pretraining config loads into the model of the matching ft_* config with no
    backbone tensor missing (published size; no training needed for the shapes)."""
    from lib.engine.build import action_model
    from lib.engine.checkpoint import load_backbone_weights, save_checkpoint
    from lib.engine.pretraining import backbone_file

    pairs = [("pretrain_NTU60_xsub_small", "action/ft_NTU60_xsub_small"),
             ("pretrain_NTU60_xview_small", "action/ft_NTU60_xview_small"),
             ("pretrain_NTU120_xsub_small", "action/ft_NTU120_xsub_small"),
             ("pretrain_NTU120_xset_small", "action/ft_NTU120_xview_small"),
             ("pretrain_NTU120_xsub_small", "oneshot/ft_oneshot_NTU120_small")]  # the embedding model
    for pretrain, finetune in pairs:
        cfg = load_yaml_config(ROOT / f"configs/pretrain/{pretrain}.yaml", ROOT / HYPER)
        save_checkpoint(backbone_file(SkeletonBackbone(backbone_settings(cfg))), tmp_path / "backbone.bin")
        model = action_model(load_yaml_config(ROOT / f"configs/{finetune}.yaml", ROOT / HYPER))
        report = load_backbone_weights(model, tmp_path / "backbone.bin")
        assert not report.missing and not report.unexpected and not report.mismatched, (pretrain, report.summary())
        assert len(report.loaded) == len(model.backbone.state_dict())


def test_pretraining_loss_falls_within_a_few_steps(data):
    """The demo's model on 8 clips of 16 frames with 90% of the tokens hidden."""
    cfg = load_yaml_config(ROOT / "configs/pretrain/pretrain_demo.yaml", ROOT / HYPER,
                           overrides=[f"data_root={data}", "dataset=pre_tiny", "decoder_depth=1", "clip_len=16"])
    p = cfg.pretrain
    torch.manual_seed(0)
    model = MaskedMotionModel(SkeletonBackbone(backbone_settings(cfg)), p.decoder_dim, p.decoder_depth, p.decoder_heads)
    dataset = ActionDataset(load_store(cfg.data.pickle_path), cfg.data, train=True)
    x = torch.from_numpy(np.stack([dataset.clip(i) for i in range(8)]))  # [8, 2, 16, V, 3]
    sequences = x.flatten(0, 1)
    mask = motion_aware_mask(sequences, p.mask_ratio, p.segment, p.tau)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses, position_losses = [], []
    for _ in range(30):
        loss, sums = pretraining_loss(model(x, mask), sequences, mask, p.segment)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        position_losses.append(sums["position_loss"] / sums["position_entries"])
    assert losses[-1] < 0.9 * losses[0], losses
    assert position_losses[-1] < 0.8 * position_losses[0], position_losses


def test_the_mask_token_replaces_the_hidden_inputs():
    """What a hidden token held does not reach the encoder: changing it leaves the prediction unchanged."""
    torch.manual_seed(0)
    cfg = load_yaml_config(ROOT / "configs/pretrain/pretrain_demo.yaml", ROOT / HYPER, overrides=TINY)
    model = MaskedMotionModel(SkeletonBackbone(backbone_settings(cfg)), 16, 1, 2).eval()
    x = torch.randn(2, 2, 8, 17, 3)
    mask = motion_aware_mask(x.flatten(0, 1), 0.5, 4, 0.8)
    changed = x.clone().flatten(0, 1)
    changed[mask] = torch.randn_like(changed[mask])
    with torch.no_grad():
        torch.testing.assert_close(model(changed.unflatten(0, (2, 2)), mask), model(x, mask))
        visible_changed = x.clone().flatten(0, 1)
        visible_changed[~mask] += 1.0
        assert not torch.allclose(model(visible_changed.unflatten(0, (2, 2)), mask), model(x, mask))


# ---------------------------------------------------------------------------------------------------------
# pretrain_action.py, backbone.bin and finetuning


@pytest.fixture(scope="module")
def pretrained(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("pretrain") / "run"
    with pytest.MonkeyPatch.context() as monkeypatch:
        assert run(pretrain_action.main, pretrain_argv(data, out, "epochs=2"), monkeypatch) == 0
    return out


def test_pretraining_writes_checkpoints_metrics_and_backbone_bin(pretrained):
    assert {"latest_epoch.bin", "best_epoch.bin", "backbone.bin", "config.yaml", "metrics.jsonl"} <= {
        p.name for p in pretrained.iterdir()}
    records = [json.loads(line) for line in (pretrained / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2] and all(np.isfinite(r["train_loss"]) for r in records)
    assert not any(key.startswith("val_") for r in records for key in r)
    saved = torch.load(pretrained / "backbone.bin", weights_only=True)
    latest = torch.load(pretrained / "latest_epoch.bin", weights_only=True)["model"]
    assert saved["backbone_config"]["dim"] == 16 and saved["backbone_config"]["depth"] == 1
    assert set(saved["backbone"]) == {k[len("backbone."):] for k in latest if k.startswith("backbone.")}
    for key, value in saved["backbone"].items():
        assert torch.equal(value, latest[f"backbone.{key}"]), key


def test_resumed_pretraining_ends_bit_identical(pretrained, data, tmp_path, monkeypatch):
    """1 epoch, then -r latest_epoch.bin with epochs=2, equals the 2 epochs in one go of `pretrained`:
    weights, optimizer, backbone.bin and metrics (the masks are random: their generator state is restored)."""
    out = tmp_path / "resumed"
    assert run(pretrain_action.main, pretrain_argv(data, out, "epochs=1"), monkeypatch) == 0
    argv = pretrain_argv(data, out, "epochs=2") + ["-r", out / "latest_epoch.bin"]
    assert run(pretrain_action.main, argv, monkeypatch) == 0
    ours, theirs = (torch.load(folder / "latest_epoch.bin", weights_only=True) for folder in (out, pretrained))
    assert ours["epoch"] == theirs["epoch"] == 2
    for key, value in theirs["model"].items():
        assert torch.equal(ours["model"][key], value), key
    for index, state in theirs["optimizer"]["state"].items():
        for name, value in state.items():
            assert torch.equal(ours["optimizer"]["state"][index][name], value), (index, name)
    ours_bin, theirs_bin = (torch.load(folder / "backbone.bin", weights_only=True) for folder in (out, pretrained))
    assert all(torch.equal(ours_bin["backbone"][k], v) for k, v in theirs_bin["backbone"].items())

    def without_time(folder):
        return [{k: v for k, v in json.loads(line).items() if k != "seconds"}
                for line in (folder / "metrics.jsonl").read_text().splitlines()]

    assert without_time(out) == without_time(pretrained)
    assert "resumed from" in (out / "run_pretrain.log").read_text()


def test_the_reconstruction_picture_is_written_at_the_end_and_on_request(pretrained, data, tmp_path, monkeypatch):
    """reconstruction.png after pretraining (three validation clips: three rows of three filmstrips), and
    the same picture, pixel for pixel, from vis_reconstruction.py on the same checkpoint."""
    import matplotlib.image

    import vis_reconstruction
    from lib.vis.reconstruction import ROW_PX, TITLE_PX

    at_end = matplotlib.image.imread(pretrained / "reconstruction.png")
    assert at_end.shape[:2] == (3 * ROW_PX[1] + TITLE_PX, ROW_PX[0])
    out = tmp_path / "again.png"
    argv = pretrain_argv(data, tmp_path, "epochs=2")
    del argv[2:4]  # --checkpoint DIR
    assert run(vis_reconstruction.main, argv + ["--evaluate", pretrained / "latest_epoch.bin", "--out", out],
               monkeypatch) == 0
    assert np.array_equal(matplotlib.image.imread(out), at_end)
    one = tmp_path / "one.png"
    assert run(vis_reconstruction.main, argv + ["--evaluate", pretrained / "latest_epoch.bin", "--out", one,
                                                "--samples", "1"], monkeypatch) == 0
    assert matplotlib.image.imread(one).shape[:2] == (ROW_PX[1] + TITLE_PX, ROW_PX[0])


@pytest.mark.parametrize("problem", ["no checkpoint", "backbone.bin"])
def test_the_reconstruction_picture_of_a_wrong_checkpoint_is_a_one_line_error(problem, pretrained, data, tmp_path,
                                                                              monkeypatch, capsys):
    import vis_reconstruction

    argv = pretrain_argv(data, tmp_path, "epochs=2")
    del argv[2:4]
    if problem == "backbone.bin":
        argv += ["--evaluate", pretrained / "backbone.bin"]
    assert run(vis_reconstruction.main, argv + ["--out", tmp_path / "x.png"], monkeypatch) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and ("--evaluate CKPT is required" in error if problem == "no checkpoint"
                                             else "is not a pretraining checkpoint" in error)
    assert not (tmp_path / "x.png").exists()


def test_the_reconstruction_of_a_perfect_prediction_is_the_truth(data):
    """Undoing the normalisation: a model whose output is the normalised truth gives back the hidden
    joints' true positions and moves in clip coordinates, and a zero loss."""
    from lib.vis.reconstruction import reconstruct
    from lib.model.masked_motion import root_mean_square

    cfg = load_yaml_config(ROOT / "configs/pretrain/pretrain_demo.yaml", ROOT / HYPER,
                           overrides=[f"data_root={data}", "dataset=pre_tiny"])
    clip = ActionDataset(load_store(cfg.data.pickle_path), cfg.data, train=False).clip(0)

    def oracle(x, mask):  # the normalised truth, as the loss defines it
        sequences = x.flatten(0, 1)
        present = sequences[..., 2] > 0
        weight = (present & mask)[..., None].expand(-1, -1, -1, 2).float()
        positions = sequences[..., :2]
        mean = (positions * weight).sum(dim=(1, 2), keepdim=True) / weight.sum(dim=(1, 2), keepdim=True).clamp(min=1)
        positions = (positions - mean) / root_mean_square(positions - mean, weight)
        move, valid = joint_motion(sequences, cfg.pretrain.segment)
        move = move / root_mean_square(move, (valid & mask)[..., None].expand_as(move).float())
        return torch.cat([positions, move], dim=-1)

    r = reconstruct(oracle, clip, cfg, "clip")
    hidden = r.hidden & r.present
    assert hidden.any() and r.loss < 1e-8
    np.testing.assert_allclose(r.predicted_pose[hidden], r.pose[hidden], atol=1e-5)
    np.testing.assert_allclose(r.predicted_move[r.hidden & r.move_valid], r.true_move[r.hidden & r.move_valid],
                               atol=1e-5)


def test_finetuning_from_backbone_bin_loads_every_backbone_tensor(pretrained, data, tmp_path, monkeypatch):
    out = tmp_path / "ft"
    argv = finetune_argv(data, out, "epochs=1", "finetune=true", f"backbone_ckpt={pretrained / 'backbone.bin'}")
    assert run(train_action.main, argv, monkeypatch) == 0
    count = len(torch.load(pretrained / "backbone.bin", weights_only=True)["backbone"])
    assert f"{count} loaded, 0 missing, 0 unexpected, 0 with another shape" in (out / "run_action.log").read_text()


def test_finetuning_builds_the_backbone_that_backbone_bin_was_pretrained_with(pretrained, data, tmp_path,
                                                                             monkeypatch, capsys):
    # The config asks for depth 2 and 32 channels; backbone.bin was pretrained at depth 1 with 16: its settings
    # win (one log line), the saved config says so, and every backbone tensor loads.
    out = tmp_path / "ft"
    argv = finetune_argv(data, out, "epochs=1", "finetune=true", "depth=2", "dim_rep=32",
                         f"backbone_ckpt={pretrained / 'backbone.bin'}")
    assert run(train_action.main, argv, monkeypatch) == 0
    assert "using its: dim_rep=16 (config: 32), depth=1 (config: 2)" in capsys.readouterr().out
    log = (out / "run_action.log").read_text()
    assert "using its: dim_rep=16 (config: 32), depth=1 (config: 2)" in log  # the run's log keeps it too
    count = len(torch.load(pretrained / "backbone.bin", weights_only=True)["backbone"])
    assert f"{count} loaded, 0 missing, 0 unexpected, 0 with another shape" in log
    saved = load_yaml_config(out / "config.yaml")
    assert (saved.model.depth, saved.model.dim_rep) == (1, 16)


def test_labels_are_never_read_and_the_validation_split_never_touched(data, tmp_path, monkeypatch):
    """Two pickles that differ only in their labels pretrain to bitwise-identical weights, and no clip of
    the validation split is made while training: only the picture, once the run has ended, reads three."""
    with open(data / "pre_tiny.pkl", "rb") as f:
        content = pickle.load(f)
    for sample in content["annotations"]:
        sample["label"] = (sample["label"] + 7) % 60
    with open(data / "relabelled.pkl", "wb") as f:
        pickle.dump(content, f)
    events = []
    real_clip, real_train = ActionDataset.clip, pretrain_action.train

    def recording_clip(self, i):
        events.append(self.split)
        return real_clip(self, i)

    def recording_train(*args):
        status = real_train(*args)
        events.append("training ended")
        return status

    monkeypatch.setattr(ActionDataset, "clip", recording_clip)
    monkeypatch.setattr(pretrain_action, "train", recording_train)
    weights = []
    for name in ("pre_tiny", "relabelled"):
        out = tmp_path / name
        events.clear()
        assert run(pretrain_action.main, pretrain_argv(data, out, "epochs=1", dataset=name), monkeypatch) == 0
        weights.append(torch.load(out / "backbone.bin", weights_only=True)["backbone"])
        ended = events.index("training ended")
        assert set(events[:ended]) == {"xsub_train"}
        assert events[ended + 1:] == ["xsub_val"] * 3  # the picture, after the weights are final
    for key in weights[0]:
        assert torch.equal(weights[0][key], weights[1][key]), key


# ---------------------------------------------------------------------------------------------------------
# Linear probe and label_fraction


def test_linear_probe_trains_the_head_only(pretrained, data, tmp_path, monkeypatch):
    out = tmp_path / "probe"
    argv = finetune_argv(data, out, "epochs=1", "finetune=true", "linear_probe=true", "drop_path_rate=0.1",
                         f"backbone_ckpt={pretrained / 'backbone.bin'}")
    assert run(train_action.main, argv, monkeypatch) == 0
    before = torch.load(pretrained / "backbone.bin", weights_only=True)["backbone"]
    after = torch.load(out / "latest_epoch.bin", weights_only=True)
    for key, value in before.items():
        assert torch.equal(value, after["model"][f"backbone.{key}"]), key
    groups = after["optimizer"]["param_groups"]
    assert groups[0]["params"] == [] and groups[1]["params"]
    assert "linear_probe: the backbone is frozen" in (out / "run_action.log").read_text()


def test_frozen_backbone_stays_in_eval_mode():
    from lib.engine.build import action_model

    cfg = load_yaml_config(ROOT / "configs/action/demo_synthetic.yaml", ROOT / HYPER, overrides=TINY)
    model = action_model(cfg).freeze_backbone().train()
    assert model.head.training and not any(m.training for m in model.backbone.modules())
    assert not any(p.requires_grad for p in model.backbone.parameters())


def test_label_fraction_is_stratified_and_seeded():
    labels = np.repeat(np.arange(6), [10, 20, 30, 5, 1, 40])
    chosen = stratified_share(labels, 0.1, seed=3)
    counts = np.bincount(labels[chosen], minlength=6)
    assert counts.tolist() == [1, 2, 3, 1, 1, 4]  # round(0.1 n), at least one a class
    assert np.array_equal(chosen, stratified_share(labels, 0.1, seed=3))
    assert not np.array_equal(chosen, stratified_share(labels, 0.1, seed=4))
    assert np.array_equal(np.sort(chosen), chosen) and len(set(chosen.tolist())) == len(chosen)


def test_label_fraction_shrinks_the_training_split_only(data):
    cfg = load_yaml_config(ROOT / "configs/action/demo_synthetic.yaml", ROOT / HYPER,
                           overrides=[f"data_root={data}", "dataset=pre_tiny", "label_fraction=0.25"])
    store = load_store(cfg.data.pickle_path)
    full = ActionDataset(store, load_yaml_config(ROOT / "configs/action/demo_synthetic.yaml", ROOT / HYPER,
                                                 overrides=[f"data_root={data}", "dataset=pre_tiny"]).data, train=True)
    part = ActionDataset(store, cfg.data, train=True)
    assert set(part.indices) < set(full.indices)
    assert set(np.unique(part.labels)) == set(np.unique(full.labels))  # every class keeps samples
    assert len(ActionDataset(store, cfg.data, train=False)) == len(
        ActionDataset(store, full.cfg, train=False))


def test_compiled_pretraining_learns_like_eager(pretrained, data, tmp_path, monkeypatch):
    """compile=true (the CUDA default) on the CPU's inductor: the masked motion model compiles, and its first
    epoch's losses follow the eager run's (no dropout here, and the masks are drawn outside the model)."""
    out = tmp_path / "compiled"
    assert run(pretrain_action.main, pretrain_argv(data, out, "epochs=1", "compile=true"), monkeypatch) == 0
    compiled = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    eager = json.loads((pretrained / "metrics.jsonl").read_text().splitlines()[0])
    assert compiled["compiled_graphs"] >= 1 and "compiled_graphs" not in eager
    for key in ("train_loss", "train_position_loss", "train_motion_loss"):
        assert compiled[key] == pytest.approx(eager[key], rel=1e-3), key
