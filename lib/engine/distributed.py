"""Several processes with DistributedDataParallel, started by torchrun (which sets RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR, MASTER_PORT); without torchrun, one process and every helper here is a no-op.
gloo on CPU, NCCL on CUDA (one GPU per process)."""
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from lib.engine.runtime import pick_device


@dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over the processes."""
        if not self.enabled:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def sum_dict(self, values: dict) -> dict:
        """Key-wise sum over the processes of dicts of numbers (a key missing on a process counts 0),
        added in rank order."""
        total = {}
        for part in self.gather(values):
            for key, value in part.items():
                total[key] = total.get(key, 0) + value
        return total

    def any(self, flag: bool) -> bool:
        """True on every process when it is True on any."""
        return self.sum([float(flag)])[0] > 0

    def gather(self, obj) -> list:
        """The objects of all processes, in rank order."""
        if not self.enabled:
            return [obj]
        gathered = [None] * self.world_size
        dist.all_gather_object(gathered, obj)
        return gathered

    def shard(self, items: list) -> list:
        """This process's share: every world_size-th item from its rank on, all shares of equal length."""
        usable = len(items) // self.world_size * self.world_size
        return items[self.rank:usable:self.world_size]

    def broadcast_buffers(self, model: torch.nn.Module):
        """Copy rank 0's buffers (BatchNorm statistics) to every process."""
        if self.enabled:
            for buffer in model.buffers():
                dist.broadcast(buffer, src=0)

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        if not self.enabled:
            return model
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def init_distributed(device_name: str) -> Distributed:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    device = pick_device(device_name)
    if world_size == 1:
        return Distributed(device=device)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Distributed(rank=rank, world_size=world_size, device=device)


def shutdown(ctx: Distributed):
    """Tear the process group down (a no-op in a single process). The entry script then leaves the process
    with lib.cli.exit_process, which under torchrun must not return normally."""
    if ctx.enabled:
        dist.destroy_process_group()


def is_main_process() -> bool:
    """Rank 0 of a torchrun launch, or a process started without torchrun; also after `shutdown`."""
    return int(os.environ.get("RANK", "0")) == 0
