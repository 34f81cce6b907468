"""The per-class sampler of embedding training: every batch holds `clips_per_class` clips of each of its
batch_size / clips_per_class classes, so every clip has positives for the contrastive loss."""
import numpy as np


def class_balanced_batches(labels: np.ndarray, batch_size: int, clips_per_class: int, seed: int,
                           epoch: int) -> list[list[int]]:
    """The batches of an epoch (positions into `labels`), drawn from a generator keyed by (seed, epoch).

    Each class's samples are shuffled and cut into groups of `clips_per_class` (a class with fewer samples
    repeats them to fill one group; the rest that does not fill a group waits for another epoch). A batch
    takes one group from each of batch_size / clips_per_class different classes, drawn with probability
    proportional to their groups left, until fewer classes than that have groups left. Every sample
    appears at most once per epoch (except in a repeated small class), so consecutive shards of the
    batches (one per process) are disjoint."""
    rng = np.random.default_rng((seed, epoch, 11))
    classes_per_batch = batch_size // clips_per_class
    groups = {}
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        if len(members) < clips_per_class:
            members = np.resize(members, clips_per_class)
        usable = len(members) // clips_per_class * clips_per_class
        groups[int(c)] = list(members[:usable].reshape(-1, clips_per_class))
    batches = []
    while True:
        available = [c for c, left in groups.items() if left]
        if len(available) < classes_per_batch:
            return batches
        weights = np.array([len(groups[c]) for c in available], dtype=np.float64)
        chosen = rng.choice(available, size=classes_per_batch, replace=False, p=weights / weights.sum())
        batches.append([int(i) for c in chosen for i in groups[int(c)].pop()])
