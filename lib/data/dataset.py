"""The action dataset: samples of one split of a SkeletonStore, made into clips on demand (numpy only).

It is a plain map-style dataset (`__len__`, `__getitem__`), which torch's DataLoader takes as is.
Training clips are drawn afresh every epoch from a random stream keyed by (seed, epoch, sample), so
they do not depend on worker count or order, and an interrupted run resumes with the same clips.
Call `set_epoch(epoch)` before iterating each epoch.
"""
import numpy as np

from lib.config import DataConfig
from lib.data.oneshot import with_oneshot_splits
from lib.data.preprocess import make_clip
from lib.data.pyskl import PackSettings, SkeletonStore, load_store
from lib.errors import UserError


class ActionDataset:
    def __init__(self, store: SkeletonStore, cfg: DataConfig, train: bool, seed: int = 0, split: str = None):
        """The samples of `split` (default: the training or the evaluation split of the config's data_split,
        see `protocol_splits`), made into clips the training way (`train`) or the validation way."""
        self.store, self.cfg, self.train, self.seed = store, cfg, train, seed
        self.split = split or protocol_splits(store, cfg.data_split)[0 if train else 1]
        self.indices = store.split_indices(self.split)  # positions in the store
        if len(self.indices) == 0:
            raise UserError(f"split '{self.split}' of {store.source} is empty")
        if train and cfg.label_fraction < 1:
            self.indices = self.indices[stratified_share(store.label[self.indices], cfg.label_fraction, seed)]
        labels = store.label[self.indices]
        if labels.max() >= cfg.action_classes:
            bad = self.indices[np.argmax(labels)]
            names = f" of the class-name file {cfg.label_map}" if cfg.label_map else ""
            raise UserError(f"{store.source}: sample {store.frame_dir[bad]} has label {store.label[bad]}, outside "
                            f"the labels 0..{cfg.action_classes - 1}{names}: set action_classes (and label_map) "
                            "to the dataset's classes")
        self.epoch = 0

    def set_epoch(self, epoch: int):
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def labels(self) -> np.ndarray:
        return self.store.label[self.indices]

    @property
    def frame_dirs(self) -> np.ndarray:
        return self.store.frame_dir[self.indices]

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        """The clip of sample i (see `clip`) and its 0-based label."""
        return self.clip(i), int(self.store.label[self.indices[i]])

    def clip(self, i: int) -> np.ndarray:
        """float32 [2, clip_len, 17, 3] (x, y, confidence per H36M joint; or bones / motion, see
        data.stream). Validation with num_clips K > 1: [K, 2, clip_len, 17, 3], the first clip evenly
        spaced, the others resampled at random with seeds fixed per clip."""
        index = int(self.indices[i])
        if self.train:
            return self._clip(index, np.random.default_rng((self.seed, self.epoch, index)))
        if self.cfg.num_clips == 1:
            return self._clip(index, None)
        return np.stack([self._clip(index, np.random.default_rng((self.seed, k, index, 1)) if k else None)
                         for k in range(self.cfg.num_clips)])

    def _clip(self, index: int, rng) -> np.ndarray:
        keypoint, score = self.store.raw_sample(index)
        return make_clip(
            keypoint, score, self.store.img_hw[index], self.cfg.clip_len, rng=rng,
            random_move_on=self.train and self.cfg.random_move,
            scale_range=self.cfg.scale_range_train if self.train else self.cfg.scale_range_test,
            legacy_conf_order=self.cfg.legacy_conf_order, stream=self.cfg.stream, tracked=self.store.tracked)


def stratified_share(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted positions of a random `fraction` of each class's samples (at least one per class), drawn
    with a generator seeded by `seed`: the same subset for the same labels, fraction and seed."""
    rng = np.random.default_rng((seed, 7))
    chosen = [rng.permutation(np.flatnonzero(labels == c))[:max(1, round(fraction * np.sum(labels == c)))]
              for c in np.unique(labels)]
    return np.sort(np.concatenate(chosen))


def protocol_splits(store: SkeletonStore, data_split: str) -> tuple[str, str]:
    """(training split, evaluation split) of a protocol, by the names each PYSKL file gives its splits:
    {p}_train and {p}_val (NTU xsub / xview / xset, custom, oneshot); splitN: trainN and testN (UCF101 and
    HMDB51, N = 1, 2, 3); official: train and val (FineGYM, Kinetics-400) or train and test (Diving48)."""
    names = set(store.splits)
    if data_split.startswith("split") and data_split[5:].isdigit():
        pair = (f"train{data_split[5:]}", f"test{data_split[5:]}")
    elif data_split == "official":
        pair = ("train", "val" if "val" in names else "test")
    else:
        pair = (f"{data_split}_train", f"{data_split}_val")
    if not set(pair) <= names:
        have = ", ".join(sorted(names)) or "none"
        usable = ", ".join(p for p in file_protocols(names)) or "none"
        raise UserError(f"data_split '{data_split}' needs the splits {pair[0]} and {pair[1]}, which "
                        f"{store.source} does not have (it has {have}); its data_split values: {usable}")
    return pair


def file_protocols(names) -> list[str]:
    """The data_split values a file with these split names offers (see protocol_splits)."""
    names = set(names)
    found = [name[:-6] for name in sorted(names) if name.endswith("_train") and f"{name[:-6]}_val" in names]
    found += [f"split{name[5:]}" for name in sorted(names) if name.startswith("train") and name[5:].isdigit()
              and f"test{name[5:]}" in names]
    if "train" in names and names & {"val", "test"}:
        found.append("official")
    return found


def open_store(cfg: DataConfig) -> SkeletonStore:
    """The store of the configured pickle (or Kinetics table of contents), with the NTU120 one-shot splits
    added for data_split oneshot."""
    store = load_store(cfg.pickle_path, settings=PackSettings(str(cfg.kpfiles_folder), cfg.box_thr))
    return with_oneshot_splits(store) if cfg.data_split == "oneshot" else store


def build_datasets(cfg: DataConfig, seed: int = 0) -> tuple[ActionDataset, ActionDataset]:
    """(train, val) datasets of the configured pickle and split."""
    store = open_store(cfg)
    return ActionDataset(store, cfg, train=True, seed=seed), ActionDataset(store, cfg, train=False, seed=seed)
