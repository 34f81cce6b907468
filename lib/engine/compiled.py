"""torch.compile for training, validation and evaluation, with a way back to eager.

`train.compile: auto` compiles on CUDA and runs eager on the CPU, where compiling the published-size model
takes minutes on a few cores for no measured gain (benchmarks/README.md, "GPU"). Shapes stay static: training
batches are all of batch_size clips (the last incomplete one is dropped) and evaluation pads its last batch
(`pad_batch`), so nothing recompiles from one epoch to the next; `compiled_graphs()` counts what was compiled,
and the training log reports it. A model that fails to compile (no working compiler, an unsupported
operation) runs eager from then on, after one warning line.
"""
import logging

import torch
from torch import nn

log = logging.getLogger(__name__)


def compile_enabled(setting, device: torch.device) -> bool:
    """train.compile: True, False, or 'auto' (CUDA only)."""
    return device.type == "cuda" if setting == "auto" else bool(setting)


def compiled_graphs() -> int:
    """Graphs torch.compile has compiled in this process so far (recompilations included)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


class CompiledOrEager:
    """Call `module` through torch.compile (`mode` as torch.compile takes it); if compiling fails, warn once
    and call `module` itself from then on. train() and eval() reach the module."""

    def __init__(self, module: nn.Module, mode: str = None):
        self.module = module
        self.compiled = torch.compile(module, mode=mode)
        self.failed = False

    def __call__(self, *args, **kwargs):
        if not self.failed:
            try:
                return self.compiled(*args, **kwargs)
            except torch._dynamo.exc.TorchDynamoException as error:
                self.failed = True
                reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                log.warning(f"torch.compile failed ({reason[:200]}); running eager (--set compile=false to skip compiling)")
        return self.module(*args, **kwargs)

    def train(self, mode: bool = True):
        self.module.train(mode)
        return self

    def eval(self):
        return self.train(False)


def maybe_compiled(module: nn.Module, setting, device: torch.device, mode: str = None):
    """`module` wrapped in CompiledOrEager when `setting` (train.compile) says so here, else `module`."""
    return CompiledOrEager(module, mode) if compile_enabled(setting, device) else module


def inference_forward(model: nn.Module, setting, device: torch.device):
    """The forward pass of evaluation: when `setting` (train.compile) compiles here, on CUDA with CUDA graphs
    (torch.compile's reduce-overhead mode: the whole pass replays as one launch, one graph per batch shape;
    `predict` pads the last batch to the others' shape) and on the CPU plainly compiled; else the model."""
    return maybe_compiled(model, setting, device, mode="reduce-overhead" if device.type == "cuda" else None)


def pad_batch(x: torch.Tensor, size: int) -> torch.Tensor:
    """x [n, ...] with zero rows appended up to `size` rows (unchanged when n >= size): a compiled model or a
    CUDA graph sees one batch shape. Only for models whose rows are independent (evaluation mode)."""
    if len(x) >= size:
        return x
    return torch.cat([x, x.new_zeros((size - len(x),) + x.shape[1:])])
