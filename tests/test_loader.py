"""The dataset under torch's DataLoader: worker processes give exactly the clips of the main process."""
import pickle

import numpy as np
import torch

from lib.config import DataConfig
from lib.data import synthetic
from lib.data.dataset import ActionDataset
from lib.data.pyskl import load_store


def batches(dataset, workers: int):
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, shuffle=False, num_workers=workers)
    return [(x.numpy(), y.numpy()) for x, y in loader]


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
