"""The dataset under torch's DataLoader: worker processes, started by the forkserver as training starts them
(lib.engine.runtime.data_loader), give exactly the clips of the main process, and share its keypoints."""
import gc
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from lib.config import DataConfig
from lib.data import synthetic
from lib.data.dataset import ActionDataset
from lib.data.pyskl import load_store
from lib.engine.runtime import data_loader


def batches(dataset, workers: int):
    loader = data_loader(dataset, torch.device("cpu"), workers, batch_size=4, shuffle=False)
    return [(x.numpy(), y.numpy()) for x, y in loader]


def mapped_files(batch) -> set:
    """As a collate_fn: the .npy files mapped by the worker process that made the batch (/proc/self/maps)."""
    return {line.split()[-1] for line in open("/proc/self/maps") if line.rstrip().endswith(".npy")}


@pytest.mark.parametrize("use_cache", [True, False])
def test_a_store_travels_to_other_processes_as_references_to_its_mapped_files(tmp_path, use_cache):
    """Pickled for a worker, a store holds file names, not keypoints: the worker maps the same files. Without
    the cache, the temporary folder lives as long as the store, then goes."""
    path = tmp_path / "demo_small.pkl"
    synthetic.write_pickle(synthetic.generate("demo", seed=2, num_samples=40), path)
    store = load_store(path, use_cache=use_cache)
    folder = Path(store.keypoint.filename).parent
    payload = pickle.dumps(store)
    assert len(payload) < store.raw_nbytes / 10
    copy = pickle.loads(payload)
    np.testing.assert_array_equal(copy.keypoint, store.keypoint)
    np.testing.assert_array_equal(copy.score, store.score)
    assert copy.keypoint.filename == store.keypoint.filename and not copy.keypoint.flags.writeable
    cfg = DataConfig(dataset=path.stem, data_root=str(tmp_path), clip_len=16, action_classes=60)
    dataset = ActionDataset(store, cfg, train=False)
    loader = data_loader(dataset, torch.device("cpu"), 1, batch_size=4, collate_fn=mapped_files)
    assert {str(folder / "keypoint.npy"), str(folder / "score.npy")} <= next(iter(loader))
    del store, copy, dataset, loader
    gc.collect()
    assert folder.exists() == use_cache


def test_workers_give_the_same_training_clips_as_the_main_process(tmp_path):
    path = tmp_path / "demo_small.pkl"
    with open(path, "wb") as f:
        pickle.dump(synthetic.generate("demo", seed=2, num_samples=40), f)
    cfg = DataConfig(dataset=path.stem, data_root=str(tmp_path), clip_len=16, action_classes=60)
    dataset = ActionDataset(load_store(path), cfg, train=True, seed=7)
    dataset.set_epoch(3)
    in_process, two_workers = batches(dataset, 0), batches(dataset, 2)
    assert len(in_process) == len(two_workers) == (len(dataset) + 3) // 4
    for (x0, y0), (x2, y2) in zip(in_process, two_workers):
        assert x0.dtype == np.float32 and x0.shape[1:] == (2, 16, 17, 3)
        np.testing.assert_array_equal(x0, x2)
        np.testing.assert_array_equal(y0, y2)
    dataset.set_epoch(4)
    assert not np.array_equal(batches(dataset, 2)[0][0], in_process[0][0])  # a new epoch, new clips
