"""The NTU RGB+D 120 one-shot protocol, derived from the standard ntu120_hrnet.pkl alone.

* Novel classes: A001, A007, ..., A115 (every sixth action, 20 classes). They are never trained on; the test
  shows one exemplar of each and asks for the class of every other clip of these classes.
* Exemplars: S001C003P008R001Axxx for actions up to A060 and S018C003P008R001Axxx above (setup 18 is the
  first NTU120 setup with the same performer and camera).
* Auxiliary classes: the other 100. Of them, A002, A008, ..., A116 (the action after each novel one) are
  held out of training with exemplars of their own (the same rule): the best epoch is picked by one-shot
  accuracy on them, never on the novel classes. The remaining 80 classes train the embedding.

The splits are added to the store as `oneshot_train` (the 80 training classes), `oneshot_val` (the held-out
auxiliary classes, exemplars included) and `oneshot_test` (the novel classes, exemplars included).
"""
import dataclasses

import numpy as np

from lib.data.pyskl import SkeletonStore
from lib.errors import UserError

NUM_ACTIONS = 120
NOVEL_ACTIONS = tuple(range(1, NUM_ACTIONS + 1, 6))  # 1-based: A001, A007, ..., A115
HELD_OUT_ACTIONS = tuple(a + 1 for a in NOVEL_ACTIONS)  # A002, A008, ..., A116
SPLITS = ("oneshot_train", "oneshot_val", "oneshot_test")


def exemplar_name(action: int) -> str:
    """The frame_dir of the exemplar of a 1-based action."""
    prefix = "S001C003P008R001" if action <= 60 else "S018C003P008R001"
    return f"{prefix}A{action:03d}"


def action_of(frame_dir: str) -> int:
    """The 1-based action of an NTU frame_dir (its last three digits)."""
    return int(frame_dir[-3:])


def oneshot_splits(store: SkeletonStore) -> dict:
    """{split: sorted sample indices} of the protocol (module docstring). A missing exemplar is a
    one-line error naming it."""
    names = {str(name): i for i, name in enumerate(store.frame_dir)}
    for action in NOVEL_ACTIONS + HELD_OUT_ACTIONS:
        if exemplar_name(action) not in names:
            raise UserError(f"{store.source} lacks the one-shot exemplar {exemplar_name(action)} of action "
                            f"A{action:03d}: the NTU120 one-shot protocol needs the standard ntu120_hrnet.pkl "
                            "(or python -m lib.data.synthetic --preset ntu120_oneshot)")
    action = store.label + 1
    return {
        "oneshot_train": np.flatnonzero(~np.isin(action, NOVEL_ACTIONS + HELD_OUT_ACTIONS)),
        "oneshot_val": np.flatnonzero(np.isin(action, HELD_OUT_ACTIONS)),
        "oneshot_test": np.flatnonzero(np.isin(action, NOVEL_ACTIONS)),
    }


def with_oneshot_splits(store: SkeletonStore) -> SkeletonStore:
    """The store with the protocol's splits added to its own."""
    return dataclasses.replace(store, splits=dict(store.splits, **oneshot_splits(store)))


def protocol_exemplars(frame_dirs) -> set:
    """The protocol exemplars among `frame_dirs` (the names of a split's samples)."""
    wanted = {exemplar_name(a) for a in NOVEL_ACTIONS + HELD_OUT_ACTIONS}
    return {str(name) for name in frame_dirs if str(name) in wanted}
