"""Several processes with DistributedDataParallel, started by torchrun (which sets RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR, MASTER_PORT); without torchrun, one process and every helper here is a no-op.
gloo on CPU, NCCL on CUDA (one GPU per process).

A process that waits for the others waits at most train.dist_timeout_minutes in any collective operation;
then, or when a peer is gone, the helpers here raise PeerFailure, one line naming this rank, the operation
and what the run was doing (`phase`), and the entry script exits at once (lib/cli.py) so that torchrun sees
the failure. Each process is killed by the kernel when its launcher dies (lib.engine.runtime.die_with_parent).
"""
import contextlib
import logging
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from lib.engine.runtime import die_with_parent, pick_device
from lib.errors import PeerFailure

log = logging.getLogger(__name__)


@dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    phase: str = "start-up"  # what the run is doing, for PeerFailure's message; set by the training loop

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
        self._collective("all_reduce", dist.all_reduce, tensor)
        return tensor.tolist()

    def sum_dict(self, values: dict) -> dict:
        """Key-wise sum over the processes of dicts of numbers (a key missing on a process counts 0),
        added in rank order."""
        total = {}
        for part in self.gather(values):
            for key, value in part.items():
                total[key] = total.get(key, 0) + value
        return total

    def any(self, *flags: bool) -> list[bool]:
        """Each flag True on every process when it is True on any (one collective operation for all)."""
        return [total > 0 for total in self.sum([float(flag) for flag in flags])]

    def gather(self, obj) -> list:
        """The objects of all processes, in rank order."""
        if not self.enabled:
            return [obj]
        gathered = [None] * self.world_size
        self._collective("all_gather_object", dist.all_gather_object, gathered, obj)
        return gathered

    def from_main(self, obj):
        """Rank 0's `obj`, on every process."""
        if not self.enabled:
            return obj
        holder = [obj]
        self._collective("broadcast_object_list", dist.broadcast_object_list, holder, src=0)
        return holder[0]

    def shard(self, items: list) -> list:
        """This process's share: every world_size-th item from its rank on, all shares of equal length."""
        usable = len(items) // self.world_size * self.world_size
        return items[self.rank:usable:self.world_size]

    def broadcast_buffers(self, model: torch.nn.Module):
        """Copy rank 0's buffers (BatchNorm statistics) to every process."""
        if self.enabled:
            for buffer in model.buffers():
                self._collective("broadcast", dist.broadcast, buffer, src=0)

    def _collective(self, name: str, operation, *args, **kwargs):
        """Run a collective operation; a timeout or a lost peer becomes PeerFailure."""
        try:
            return operation(*args, **kwargs)
        except RuntimeError as e:  # gloo and NCCL report both as RuntimeError (DistBackendError is one)
            raise self.peer_failure(name, e) from None

    @contextlib.contextmanager
    def training_step(self):
        """Around the forward and backward pass of a DistributedDataParallel model, which communicate like
        any collective operation (the buffers broadcast before the forward pass, the gradients all_reduced
        in the backward pass): an error of the process group's transport becomes PeerFailure; any other
        error stays as it is."""
        try:
            yield
        except RuntimeError as e:
            if self.enabled and (isinstance(e, dist.DistError) or any(mark in str(e) for mark in ("/gloo/", "NCCL"))):
                raise self.peer_failure("DistributedDataParallel's buffer broadcast or gradient all_reduce", e) from None
            raise

    def peer_failure(self, name: str, error: Exception) -> PeerFailure:
        reason = " ".join(str(error).split())[:300]
        return PeerFailure(f"rank {self.rank} of {self.world_size}: {name} during {self.phase} failed: another "
                           f"process died, or hung past train.dist_timeout_minutes ({reason})")

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        if not self.enabled:
            return model
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def init_distributed(device_name: str, timeout_minutes: float) -> Distributed:
    """This process's place in a torchrun launch (or a single process). Collective operations that wait
    longer than `timeout_minutes` fail."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    device = pick_device(device_name)
    if world_size == 1:
        return Distributed(device=device)
    die_with_parent()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    timeout = timedelta(minutes=timeout_minutes)
    store, rank, world_size = next(dist.rendezvous("env://", timeout=timeout))
    store = dist.PrefixStore(attempt_prefix(world_size), store)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", store=store, rank=rank,
                            world_size=world_size, timeout=timeout)
    return Distributed(rank=rank, world_size=world_size, device=device)


def attempt_prefix(world_size: int) -> str:
    """The store prefix of this launch's keys. A torchrun restart reuses the store of its agent (torch's default,
    TORCHELASTIC_USE_AGENT_STORE), keys of the earlier attempts included: a new process could read a dead
    one's address and fail to connect (under gloo it did in most restarts here; pytorch/pytorch#135712). On
    one node, the restart count names the attempt for every process; across nodes the counts differ (each
    agent keeps its own), so there the launcher must give each attempt a store of its own:
    TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1, as the sbatch example does (docs/distributed.md)."""
    shared_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    if shared_store and int(os.environ.get("LOCAL_WORLD_SIZE", world_size)) == world_size:
        return f"restart_{torchrun_restart()[0]}/"
    if shared_store and int(os.environ["RANK"]) == 0:
        log.warning("torchrun shares its store with the processes across nodes: after a restart they can connect "
                    "to dead peers; launch torchrun with TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 (docs/distributed.md)")
    return ""


def torchrun_restart() -> tuple[int, int]:
    """(this launch's restart count, the most torchrun allows: --max-restarts); (0, 0) without torchrun."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")), int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0"))


def shutdown(ctx: Distributed):
    """Tear the process group down (a no-op in a single process). The entry script then leaves the process
    with lib.cli.exit_process, which under torchrun must not return normally."""
    if ctx.enabled:
        dist.destroy_process_group()


def is_main_process() -> bool:
    """Rank 0 of a torchrun launch, or a process started without torchrun; also after `shutdown`."""
    return int(os.environ.get("RANK", "0")) == 0
