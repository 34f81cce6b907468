"""The core of the embedding models (lib/fewshot/, lib/engine/embedding.py, model_version embed): the supervised
contrastive loss against the formula of its docstring, the per-class sampler, the person mask of the
embedding head, nearest-class matching, the config checks, and training through train_action.main with an
exact resume. Expected values are computed here independently (plain Python / numpy), never pasted from a run.
"""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import train_action
from lib.cli import run_main
from lib.config import load_yaml_config
from lib.data import synthetic
from lib.data.dataset import ActionDataset, open_store
from lib.data.oneshot import HELD_OUT_ACTIONS, exemplar_name
from lib.data.preprocess import make_clip
from lib.data.pyskl import load_store
from lib.engine import matching
from lib.engine.build import action_model
from lib.engine.distributed import Distributed
from lib.engine.embedding import class_balanced_batches, supervised_contrastive_loss
from lib.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "configs/oneshot/oneshot_demo.yaml"
# A model small enough for CPU tests; the same in every run compared with another.
TINY = ["dim_rep=16", "depth=1", "num_heads=2", "clip_len=8", "maxlen=8", "hidden_dim=32", "embed_dim=16",
        "num_workers=0", "device=cpu"]
TRAIN = TINY + ["batch_size=8", "clips_per_class=2", "ckpt_save_frequency=1"]  # 4 classes of 2 clips a batch


def sets(*assignments) -> list[str]:
    return [arg for a in assignments for arg in ("--set", a)]


def unit_rows(rng, n: int, d: int) -> np.ndarray:
    v = rng.normal(size=(n, d))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


# ---------------------------------------------------------------------------------------------------------
# 1. The supervised contrastive loss


def reference_supcon(z: np.ndarray, labels, t: float) -> float:
    """The docstring's formula, anchor by anchor, in plain Python floats."""
    n = len(labels)
    per_anchor = []
    for i in range(n):
        positives = [p for p in range(n) if p != i and labels[p] == labels[i]]
        if not positives:
            continue  # an anchor without a positive is left out
        denominator = sum(math.exp(float(np.dot(z[i], z[a])) / t) for a in range(n) if a != i)
        total = 0.0
        for p in positives:
            total += math.log(math.exp(float(np.dot(z[i], z[p])) / t) / denominator)
        per_anchor.append(-total / len(positives))
    return sum(per_anchor) / len(per_anchor)


@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_supcon_loss_equals_the_per_anchor_formula(temperature):
    rng = np.random.default_rng(3)
    labels = [0, 1, 0, 2, 1, 1, 3, 0]  # classes 2 and 3: one clip each, anchors without a positive
    z = unit_rows(rng, len(labels), 5)
    expected = reference_supcon(z, labels, temperature)
    loss = supervised_contrastive_loss(torch.tensor(z), torch.tensor(labels), temperature)
    assert loss.dtype == torch.float64
    assert float(loss) == pytest.approx(expected, rel=1e-10, abs=1e-12)
    # the anchors without positives are really excluded, not counted as zero
    assert float(loss) != pytest.approx(expected * 6 / 8, rel=1e-6)
    # float32 input gives the same number to float32 precision
    loss32 = supervised_contrastive_loss(torch.tensor(z, dtype=torch.float32), torch.tensor(labels), temperature)
    assert float(loss32) == pytest.approx(expected, rel=1e-5)


def test_supcon_loss_of_a_batch_without_positives_is_zero_and_backpropagates():
    z = torch.tensor(unit_rows(np.random.default_rng(0), 4, 6), requires_grad=True)
    loss = supervised_contrastive_loss(z, torch.tensor([0, 1, 2, 3]), 0.1)
    assert float(loss.detach()) == 0.0
    assert loss.requires_grad and loss.grad_fn is not None
    loss.backward()
    assert z.grad is not None and torch.equal(z.grad, torch.zeros_like(z))


def test_supcon_loss_gradient_passes_gradcheck():
    rng = np.random.default_rng(1)
    labels = torch.tensor([0, 0, 1, 1, 2])
    z = torch.tensor(rng.normal(size=(5, 3)), dtype=torch.float64, requires_grad=True)

    def loss_of(raw):
        return supervised_contrastive_loss(F.normalize(raw, dim=-1), labels, 0.3)

    assert torch.autograd.gradcheck(loss_of, (z,), eps=1e-6, atol=1e-6)
    loss_of(z).backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------------------
# 2. The per-class sampler


def assert_balanced(batch, labels, batch_size, clips_per_class):
    assert len(batch) == batch_size
    classes, counts = np.unique(labels[batch], return_counts=True)
    assert len(classes) == batch_size // clips_per_class, batch
    assert (counts == clips_per_class).all(), batch


def test_sampler_batches_hold_whole_classes_without_repeats():
    rng = np.random.default_rng(0)
    counts = [2, 3, 4, 5, 6, 7, 8, 9, 3, 4, 2, 5]  # 12 classes, every one with >= clips_per_class samples
    labels = rng.permutation(np.repeat(np.arange(len(counts)) * 3 + 1, counts))  # class ids not 0..C-1
    batch_size, per_class = 6, 2
    batches = class_balanced_batches(labels, batch_size, per_class, seed=4, epoch=0)
    assert batches and all(isinstance(i, int) for b in batches for i in b)
    for batch in batches:
        assert_balanced(batch, labels, batch_size, per_class)
    positions = [i for b in batches for i in b]
    assert len(positions) == len(set(positions)), "a position repeats within the epoch"
    # the epoch stops only when fewer than 3 classes have a whole group of 2 left
    used = {c: 0 for c in np.unique(labels)}
    for i in positions:
        used[labels[i]] += 1
    groups_left = [np.sum(labels == c) // per_class - used[c] // per_class for c in used]
    assert min(groups_left) >= 0
    assert sum(left > 0 for left in groups_left) < batch_size // per_class


def test_sampler_is_keyed_by_seed_and_epoch():
    labels = np.repeat(np.arange(10), 6)
    first = class_balanced_batches(labels, 8, 2, seed=0, epoch=3)
    assert class_balanced_batches(labels, 8, 2, seed=0, epoch=3) == first
    assert class_balanced_batches(labels, 8, 2, seed=0, epoch=4) != first
    assert class_balanced_batches(labels, 8, 2, seed=1, epoch=3) != first


def test_sampler_repeats_the_sample_of_a_single_sample_class():
    labels = np.array([1, 1, 0, 2, 2, 3, 3])  # class 0 has one sample (position 2)
    # 4 classes of one group each, 2 classes a batch: both batches are always drawn, so class 0 is in one
    for epoch in range(5):
        batches = class_balanced_batches(labels, 4, 2, seed=0, epoch=epoch)
        assert len(batches) == 2
        for batch in batches:
            assert_balanced(batch, labels, 4, 2)
        with_zero = [b for b in batches if 0 in labels[b]]
        assert len(with_zero) == 1 and sorted(i for i in with_zero[0] if labels[i] == 0) == [2, 2]


def test_shards_of_two_processes_are_disjoint_and_balanced():
    labels = np.repeat(np.arange(9), [4, 6, 2, 8, 4, 4, 6, 2, 4])
    batches = class_balanced_batches(labels, 6, 2, seed=2, epoch=1)
    shards = [Distributed(rank=r, world_size=2).shard(batches) for r in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == len(batches) // 2 > 0
    for shard in shards:
        for batch in shard:
            assert_balanced(batch, labels, 6, 2)
    assert not set(i for b in shards[0] for i in b) & set(i for b in shards[1] for i in b)


# ---------------------------------------------------------------------------------------------------------
# 3. The embedding head leaves absent persons out; the classification head does not


def tiny_model(version: str):
    cfg = load_yaml_config(DEMO, overrides=TINY + [f"model_version={version}"])
    torch.manual_seed(0)
    return action_model(cfg).eval(), cfg


def one_person(frames: int) -> torch.Tensor:
    person = torch.randn(frames, 17, 3)
    person[..., 2] = torch.rand(frames, 17) * 0.5 + 0.5  # confidences
    return person


def test_embedding_ignores_an_all_zero_person_wherever_it_sits():
    model, cfg = tiny_model("embed")
    frames = cfg.data.clip_len
    a, b = one_person(frames), one_person(frames)
    zero = torch.zeros_like(a)
    with torch.no_grad():
        first = model(torch.stack([a, zero])[None])
        second = model(torch.stack([zero, a])[None])
        alone = model(a[None, None])
        both = model(torch.stack([a, b])[None])
        swapped = model(torch.stack([b, a])[None])
        b_alone = model(torch.stack([b, zero])[None])
        batch = model(torch.stack([torch.stack([a, zero]), torch.stack([a, b])]))
    assert first.shape == (1, cfg.model.embed_dim)
    torch.testing.assert_close(first, second, atol=1e-6, rtol=0)
    torch.testing.assert_close(first, alone, atol=1e-6, rtol=0)
    for e in (first, alone, both, b_alone):
        torch.testing.assert_close(e.norm(dim=-1), torch.ones(1), atol=1e-5, rtol=0)
    # two present persons: their mean, not either one, and the same in either order
    assert (both - first).abs().max() > 1e-3 and (both - b_alone).abs().max() > 1e-3
    torch.testing.assert_close(both, swapped, atol=1e-6, rtol=0)
    # the mask is per clip: a batch gives each clip its own embedding
    torch.testing.assert_close(batch, torch.cat([first, both]), atol=1e-5, rtol=0)


def test_embedding_of_a_one_person_clip_from_the_data_pipeline_ignores_the_padding():
    model, cfg = tiny_model("embed")
    rng = np.random.default_rng(0)
    keypoint = rng.uniform(400, 900, size=(1, 30, 17, 2)).astype(np.float32)  # one person, in pixels
    score = np.full((1, 30, 17), 0.9, dtype=np.float32)
    clip = torch.from_numpy(make_clip(keypoint, score, (1080, 1920), cfg.data.clip_len))[None]  # [1, 2, T, 17, 3]
    assert clip.shape[1] == 2 and (clip[0, 1, ..., 2] == 0).all()  # slot 2: the padding, confidence 0
    with torch.no_grad():
        torch.testing.assert_close(model(clip), model(clip[:, :1]), atol=1e-6, rtol=0)


def test_classification_head_still_averages_over_every_person():
    model, cfg = tiny_model("class")
    a = one_person(cfg.data.clip_len)
    with torch.no_grad():
        padded = model(torch.stack([a, torch.zeros_like(a)])[None])
        swapped = model(torch.stack([torch.zeros_like(a), a])[None])
        alone = model(a[None, None])
    assert padded.shape == alone.shape == (1, cfg.data.action_classes)
    torch.testing.assert_close(padded, swapped, atol=1e-5, rtol=0)  # a mean: the order does not matter
    assert (padded - alone).abs().max() > 1e-4, "the published head averages the zero person in"


# ---------------------------------------------------------------------------------------------------------
# 4. Matching


@pytest.fixture
def clusters():
    """3 classes of 4 examples: random unit directions plus small noise, labels 0, 1, 2 (class-major)."""
    rng = np.random.default_rng(7)
    centres = unit_rows(rng, 3, 16)
    labels = np.repeat(np.arange(3), 4)
    embeddings = matching.normalize(centres[labels] + 0.05 * rng.normal(size=(12, 16)))
    return embeddings, labels


def test_prototypes_are_unit_class_means_in_the_order_asked(clusters):
    embeddings, labels = clusters
    order = [2, 0, 1]
    protos = matching.prototypes(embeddings, labels, order)
    assert protos.shape == (3, 16)
    np.testing.assert_allclose(np.linalg.norm(protos, axis=1), 1.0, atol=1e-12)
    for row, c in zip(protos, order):
        mean = embeddings[labels == c].mean(axis=0)
        np.testing.assert_allclose(row * np.linalg.norm(mean), mean, atol=1e-12)
    single = matching.prototypes(embeddings[:1], labels[:1], [0])
    np.testing.assert_allclose(single[0], embeddings[0], atol=1e-12)


def test_nearest_with_a_threshold_says_unknown_below_it():
    protos = np.eye(3)
    queries = matching.normalize(np.array([[1.0, 0, 0], [0.6, 1.0, 0.1], [1.0, 1.0, 1.1], [0, 0, -1.0]]))
    index, score = matching.nearest(queries, protos)
    similarity = queries @ protos.T
    np.testing.assert_array_equal(index, similarity.argmax(axis=1))
    np.testing.assert_allclose(score, similarity.max(axis=1))
    threshold = 0.9
    guarded, guarded_score = matching.nearest(queries, protos, threshold=threshold)
    np.testing.assert_allclose(guarded_score, score)
    expected = np.where(score >= threshold, index, matching.UNKNOWN)
    np.testing.assert_array_equal(guarded, expected)
    assert (guarded == matching.UNKNOWN).sum() == 3 and guarded[0] == 0  # only the first is accepted
    exact, _ = matching.nearest(queries[:1], protos, threshold=1.0)  # a similarity equal to it is accepted
    assert exact[0] == 0


def independent_loo(embeddings, labels):
    genuine, impostor = [], []
    for i in range(len(labels)):
        same = [j for j in range(len(labels)) if j != i and labels[j] == labels[i]]
        if same:
            mean = embeddings[same].mean(axis=0)
            genuine.append(float(embeddings[i] @ mean / np.linalg.norm(mean)))
        others = []
        for c in set(labels.tolist()) - {labels[i]}:
            mean = embeddings[labels == c].mean(axis=0)
            others.append(float(embeddings[i] @ mean / np.linalg.norm(mean)))
        if others:
            impostor.append(max(others))
    return np.array(genuine), np.array(impostor)


def test_suggested_threshold_separates_well_separated_clusters(clusters):
    embeddings, labels = clusters
    genuine, impostor = independent_loo(embeddings, labels)
    assert len(genuine) == len(impostor) == 12 and genuine.min() > impostor.max()  # the fixture is separable
    threshold = matching.suggest_threshold(embeddings, labels)
    assert impostor.max() < threshold < genuine.min()
    assert threshold == pytest.approx((impostor.max() + genuine.min()) / 2, abs=1e-9)  # half-way
    # and the gallery's own clips are then all accepted as their class
    predicted, _ = matching.nearest(embeddings, matching.prototypes(embeddings, labels, [0, 1, 2]), threshold)
    np.testing.assert_array_equal(predicted, labels)


def test_suggested_threshold_with_one_kind_of_similarity(clusters):
    embeddings, labels = clusters
    one_class = labels == 1
    genuine, _ = independent_loo(embeddings[one_class], labels[one_class])
    only_genuine = matching.suggest_threshold(embeddings[one_class], labels[one_class])
    assert genuine.min() - 0.01 < only_genuine < genuine.min()  # just below: all accepted
    firsts = np.array([0, 4, 8])
    _, impostor = independent_loo(embeddings[firsts], labels[firsts])
    only_impostor = matching.suggest_threshold(embeddings[firsts], labels[firsts])
    assert impostor.max() < only_impostor < impostor.max() + 0.01  # just above: all rejected
    assert matching.suggest_threshold(embeddings[:1], labels[:1]) == 0.0


def test_exemplar_positions_prefer_named_exemplars():
    labels = np.array([0, 0, 1, 1, 1, 2, 2, 3])
    names = ["a", "b", "c", "d", "e", "f", "g", "h"]
    assert matching.exemplar_positions(labels, names, {"b", "e", "g"}) == {0: 1, 1: 4, 2: 6, 3: 7}
    assert matching.exemplar_positions(labels, names, set()) == {0: 0, 1: 2, 2: 5, 3: 7}
    assert matching.exemplar_positions(labels, names, {"d", "e"}) == {0: 0, 1: 3, 2: 5, 3: 7}  # the first named


def test_one_shot_accuracy_on_clusters(clusters):
    embeddings, labels = clusters
    exemplars = {0: 1, 1: 6, 2: 11}
    result = matching.one_shot_accuracy(embeddings, labels, exemplars)
    assert result["top1"] == 100.0 and result["mean_class_accuracy"] == 100.0 and result["queries"] == 9
    np.testing.assert_array_equal(result["positions"], [0, 2, 3, 4, 5, 7, 8, 9, 10])
    np.testing.assert_array_equal(result["predicted"], labels[result["positions"]])
    # a clip labelled 1 that looks like class 0 is an error: 8 of 9 right, class 1 at 3 of 4
    relabelled = labels.copy()
    relabelled[2] = 1
    wrong = matching.one_shot_accuracy(embeddings, relabelled, exemplars)
    assert wrong["top1"] == pytest.approx(100 * 8 / 9)
    per_class = [100 * 2 / 2, 100 * 3 / 4, 100 * 3 / 3]  # class 0: 0, 3; class 1: 2 (wrong), 4, 5, 7; class 2
    assert wrong["mean_class_accuracy"] == pytest.approx(np.mean(per_class))
    # clips of a class without an exemplar are no queries
    partial = matching.one_shot_accuracy(embeddings, labels, {0: 0, 2: 8})
    np.testing.assert_array_equal(partial["positions"], [1, 2, 3, 9, 10, 11])


def test_k_shot_accuracy_gives_one_seeded_value_per_draw(clusters):
    embeddings, labels = clusters
    result = matching.k_shot_accuracy(embeddings, labels, k=2, draws=5, seed=0)
    assert result["k"] == 2 and result["draws"] == [100.0] * 5 and result["mean"] == 100.0
    noise = unit_rows(np.random.default_rng(0), 40, 8)
    noise_labels = np.repeat(np.arange(5), 8)
    first = matching.k_shot_accuracy(noise, noise_labels, k=1, draws=6, seed=3)
    assert len(first["draws"]) == 6
    assert first["mean"] == pytest.approx(np.mean(first["draws"]))
    assert first["std"] == pytest.approx(np.std(first["draws"]))
    assert matching.k_shot_accuracy(noise, noise_labels, k=1, draws=6, seed=3) == first
    assert matching.k_shot_accuracy(noise, noise_labels, k=1, draws=6, seed=4)["draws"] != first["draws"]
    assert len(set(first["draws"])) > 1, "different draws of random embeddings should score differently"
    # each draw: k supports a class, the queries are all the others of those classes
    support, queries = matching.k_shot_draw(noise_labels, 3, np.random.default_rng(0))
    assert (np.bincount(noise_labels[support]) == 3).all()
    assert sorted(support.tolist() + queries.tolist()) == list(range(40))


# ---------------------------------------------------------------------------------------------------------
# 5. Config checks


def test_demo_config_is_valid_as_shipped_and_with_other_whole_class_batches():
    cfg = load_yaml_config(DEMO)
    assert cfg.model.model_version == "embed" and cfg.data.data_split == "oneshot"
    assert cfg.train.batch_size % cfg.fewshot.clips_per_class == 0
    load_yaml_config(DEMO, overrides=["batch_size=6", "clips_per_class=3"])


@pytest.mark.parametrize("overrides", [["batch_size=6", "clips_per_class=4"],  # not a multiple
                                       ["batch_size=4", "clips_per_class=4"]],  # one class only
                         ids=["not_a_multiple", "one_class"])
def test_embedding_batches_must_cover_whole_classes(overrides):
    with pytest.raises(UserError, match="clips_per_class"):
        load_yaml_config(DEMO, overrides=overrides)
    # a classification model has no such rule
    load_yaml_config(DEMO, overrides=overrides + ["model_version=class"])


def test_oneshot_split_needs_an_ntu120_dataset():
    with pytest.raises(UserError, match="oneshot"):
        load_yaml_config(DEMO, overrides=["dataset=ntu60_hrnet"])
    load_yaml_config(DEMO, overrides=["dataset=ntu60_hrnet", "data_split=xsub"])


# ---------------------------------------------------------------------------------------------------------
# 6. Training through train_action.main, and exact resume


def train(data: Path, out: Path, *overrides, resume=None) -> int:
    argv = ["--config", str(DEMO), "--checkpoint", str(out)]
    if resume is not None:
        argv += ["-r", str(resume)]
    return run_main(train_action.main, argv + sets(f"data_root={data}", "dataset=ntu120_oneshot_tiny", *TRAIN,
                                                   *overrides))


def read_metrics(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if line.strip()]


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """A tiny ntu120_oneshot pickle (240 drawn clips + the 40 exemplars); 2 epochs in one go (its training
    batches recorded), and 1 epoch resumed to 2."""
    data = tmp_path_factory.mktemp("data")
    synthetic.write_pickle(synthetic.generate("ntu120_oneshot", seed=0, num_samples=240),
                           data / "ntu120_oneshot_tiny.pkl")
    load_store(data / "ntu120_oneshot_tiny.pkl")  # pack the cache once
    folder = tmp_path_factory.mktemp("runs")
    batches = []
    original = train_action.EmbeddingTask.training_step

    def recording(self, forward, batch, device):
        batches.append(batch[1].clone())
        return original(self, forward, batch, device)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train_action.EmbeddingTask, "training_step", recording)
        assert train(data, folder / "whole", "train.epochs=2") == 0
    assert train(data, folder / "resumed", "train.epochs=1") == 0
    assert train(data, folder / "resumed", "train.epochs=2", resume=folder / "resumed/latest_epoch.bin") == 0
    return {"data": data, "whole": folder / "whole", "resumed": folder / "resumed", "batches": batches}


def test_embedding_training_writes_metrics_and_checkpoints(runs):
    out = runs["whole"]
    records = read_metrics(out)
    assert [r["epoch"] for r in records] == [1, 2]
    for r in records:
        assert 0 <= r["val_top1"] <= 100 and 0 <= r["val_mean_class_accuracy"] <= 100
        assert np.isfinite(r["train_loss"]) and r["train_loss"] > 0
    assert records[1]["train_loss"] < records[0]["train_loss"], "two epochs at lr 1e-3 should learn"
    for name in ("best_epoch.bin", "latest_epoch.bin", "config.yaml"):
        assert (out / name).is_file(), name
    best = load(out / "best_epoch.bin")
    top1 = [r["val_top1"] for r in records]
    assert best["epoch"] == 1 + int(np.argmax(top1))
    assert best["progress"]["best_score"] == pytest.approx(max(top1))
    # every training batch held whole classes: 4 classes of 2 clips
    assert len(runs["batches"]) == 2 * 20  # 160 training clips of 80 classes: 20 batches an epoch
    for labels in runs["batches"]:
        _, counts = torch.unique(labels, return_counts=True)
        assert len(labels) == 8 and counts.tolist() == [2, 2, 2, 2]


def test_validation_is_one_shot_accuracy_against_the_protocol_exemplars(runs):
    """The logged val_top1 and val_mean_class_accuracy of each epoch, recomputed here from epoch_N.bin:
    every held-out clip (not an exemplar) takes the class of its most similar protocol exemplar
    (S001/S018C003P008R001Axxx), which is not always the first clip of its class."""
    out = runs["whole"]
    cfg = load_yaml_config(out / "config.yaml")
    val_set = ActionDataset(open_store(cfg.data), cfg.data, train=False, seed=cfg.train.seed)
    labels, names = val_set.labels, [str(n) for n in val_set.frame_dirs]
    assert sorted(set((labels + 1).tolist())) == sorted(HELD_OUT_ACTIONS)
    exemplar_of = {int(c): names.index(exemplar_name(int(c) + 1)) for c in np.unique(labels)}
    queries = [i for i in range(len(names)) if i not in exemplar_of.values()]
    assert len(queries) == len(names) - len(HELD_OUT_ACTIONS)
    classes = sorted(exemplar_of)
    clips = torch.stack([torch.from_numpy(val_set[i][0]) for i in range(len(val_set))])
    logged = {r["epoch"]: r for r in read_metrics(out)}
    for epoch in (1, 2):
        model = action_model(cfg)
        model.load_state_dict(load(out / f"epoch_{epoch}.bin")["model"])
        with torch.no_grad():
            embeddings = model.eval()(clips).numpy()
        gallery = embeddings[[exemplar_of[c] for c in classes]]
        predicted = np.array(classes)[np.argmax(embeddings[queries] @ gallery.T, axis=1)]
        truth = labels[queries]
        top1 = 100.0 * np.mean(predicted == truth)
        mean_class = 100.0 * np.mean([np.mean(predicted[truth == c] == c) for c in classes])
        assert logged[epoch]["val_top1"] == pytest.approx(top1, abs=1e-9), epoch
        assert logged[epoch]["val_mean_class_accuracy"] == pytest.approx(mean_class, abs=1e-9), epoch


def test_resumed_embedding_training_ends_bit_identical(runs):
    ours, theirs = load(runs["resumed"] / "latest_epoch.bin"), load(runs["whole"] / "latest_epoch.bin")
    assert ours["model"].keys() == theirs["model"].keys()
    different = [k for k in ours["model"] if not torch.equal(ours["model"][k], theirs["model"][k])]
    assert not different, f"{len(different)} tensors differ after resume, e.g. {different[:3]}"
    for p, slots in theirs["optimizer"]["state"].items():
        for name, value in slots.items():
            assert torch.equal(ours["optimizer"]["state"][p][name], value), (p, name)

    def without_time(records):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in records]

    assert without_time(read_metrics(runs["resumed"])) == without_time(read_metrics(runs["whole"]))
    assert "resumed from" in (runs["resumed"] / "run_action.log").read_text()
