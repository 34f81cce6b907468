"""Count the ATen operators a piece of eager PyTorch code dispatches: a forward pass or a training step.

Each operator that is not a view is one kernel launch on CUDA (one loop on the CPU), so the count is what
launch overhead and memory round trips scale with, and it is the same on the CPU as on the GPU. Copies
(casts, `contiguous`, layout changes) are counted apart: they move memory and compute nothing.

    python benchmarks/op_count.py [--config CFG] [--frames 16] [--batch 2]   # prints the counts as JSON
"""
import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lib.config import load_yaml_config  # noqa: E402
from lib.engine.build import action_model  # noqa: E402

DEFAULT = ROOT / "configs/action/train_NTU60_xsub_small.yaml"
HYPER = ROOT / "hyper_config/method2/manual_joint_label1.yaml"
# Operators that only make a new view of the same memory: no kernel.
VIEWS = {"view", "_unsafe_view", "reshape", "transpose", "t", "permute", "expand", "unsqueeze", "squeeze", "slice",
         "select", "split", "split_with_sizes", "chunk", "unbind", "as_strided", "alias", "detach", "unflatten",
         "flatten", "view_as", "expand_as", "_reshape_alias", "lift_fresh", "unsafe_split", "narrow"}
COPIES = {"copy_", "_to_copy", "clone", "contiguous", "_copy_from", "index", "cat"}


class OperatorCounter(TorchDispatchMode):
    """Within `with OperatorCounter() as counter:`, counter.counts[name] is how often each ATen operator ran."""

    def __init__(self):
        super().__init__()
        self.counts = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))

    def summary(self) -> dict:
        """kernels: operators that are not views; copies: those of them that only move memory; top: the most
        frequent operators."""
        kernels = {name: n for name, n in self.counts.items() if name not in VIEWS}
        return {"kernels": sum(kernels.values()), "copies": sum(n for name, n in kernels.items() if name in COPIES),
                "views": sum(n for name, n in self.counts.items() if name in VIEWS),
                "top": dict(Counter(kernels).most_common(12))}


def count_model(model, x: torch.Tensor, y: torch.Tensor, amp_device: torch.device = None) -> dict:
    """Operator counts of one no-grad forward pass (eval mode) and one training step (forward, loss, backward;
    the optimizer step not included) of `model` on x [N, M, T, V, 3] with labels y, under bf16 autocast when
    `amp_device` is given (autocast's casts are counted: they are kernels too)."""
    def autocast():
        device = amp_device or x.device
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp_device is not None)

    with torch.no_grad(), autocast(), OperatorCounter() as forward:
        model.eval()(x)
    model.train()
    with OperatorCounter() as step:
        with autocast():
            logits = model(x)
        F.cross_entropy(logits.float(), y).backward()
    model.zero_grad(set_to_none=True)
    return {"forward": forward.summary(), "train_step": step.summary()}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, default=DEFAULT)
    p.add_argument("--frames", type=int, default=16, help="clip length (the counts do not depend on it)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args()
    cfg = load_yaml_config(args.config, HYPER, overrides=[f"clip_len={args.frames}", f"maxlen={args.frames}",
                                                          *args.overrides])
    torch.manual_seed(0)
    model = action_model(cfg)
    x = torch.randn(args.batch, 2, args.frames, 17, 3)
    y = torch.randint(0, cfg.data.action_classes, (args.batch,))
    print(json.dumps(count_model(model, x, y), indent=2))


if __name__ == "__main__":
    main()
