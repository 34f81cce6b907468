"""Check a dataset pickle against a config and print what is in it.

    python -m lib.data.summary --config configs/action/train_NTU60_xsub_small.yaml [--set KEY=VALUE ...]

Loads the pickle (building its keypoint cache on the first start), prints the splits, sample lengths,
person counts and classes, and reads one training and one validation clip through the full pipeline.
"""
import logging
import sys
import time

import numpy as np

from lib.cli import build_parser, config_from_args, run_main
from lib.data.dataset import ActionDataset, open_store
from lib.data.labels import class_names


def describe_split(dataset: ActionDataset, names: list[str]) -> str:
    store, idx = dataset.store, dataset.indices
    frames, persons = store.frames[idx], store.persons[idx]
    labels = dataset.labels
    counts = np.bincount(labels, minlength=len(names))
    common = int(np.argmax(counts))
    return (f"{dataset.split:>12}: {len(idx):7d} samples, {np.count_nonzero(counts):4d} classes, "
            f"frames {frames.min()}-{int(np.median(frames))}-{frames.max()} (min-median-max), "
            f"persons 0/1/2/more: {np.sum(persons == 0)}/{np.sum(persons == 1)}/{np.sum(persons == 2)}/{np.sum(persons > 2)}, "
            f"most common: '{names[common]}' ({counts[common]})")


def main(argv=None):
    args = build_parser(__doc__.splitlines()[0], "summary").parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    cfg = config_from_args(args)
    names = class_names(cfg.data.action_classes, cfg.data.label_map)
    start = time.perf_counter()
    store = open_store(cfg.data)
    seconds = time.perf_counter() - start
    print(f"{cfg.data.pickle_path}: {len(store)} samples, splits {', '.join(sorted(store.splits))}; "
          f"keypoints {store.raw_nbytes / 2**20:.1f} MiB; ready in {seconds:.2f} s")
    for train in (True, False):
        dataset = ActionDataset(store, cfg.data, train=train, seed=cfg.train.seed)
        print(describe_split(dataset, names))
        clip, label = dataset[0]
        print(f"{'':>12}  first clip {list(clip.shape)} {clip.dtype}, range [{clip.min():.2f}, {clip.max():.2f}], "
              f"label {label} '{names[label]}'")


if __name__ == "__main__":
    sys.exit(run_main(main))
