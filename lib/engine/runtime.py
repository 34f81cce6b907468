"""Process-level set-up shared by the entry scripts: device, seeds, logging, the C heap, DataLoaders and
their worker processes."""
import ctypes
import functools
import logging
import math
import multiprocessing
import os
import platform
import random
import select
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from lib.config import Config
from lib.errors import UserError

LIB_LOGGER = logging.getLogger("lib")  # every module's logging.getLogger(__name__) reports here
log = logging.getLogger(__name__)


def pick_device(name: str) -> torch.device:
    """'auto' is CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device '{name}' asked for, but CUDA is not available here; use --device cpu")
    return torch.device(name)


GLIBC_MMAP_CEILING = 32 * 2 ** 20  # glibc's malloc maps blocks above this fresh from the kernel, every time
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep the memory that tensors free for the next ones instead of handing it back
    to the kernel. By default it returns the free top of its heap once that exceeds twice its adaptive
    mmap threshold (at most 64 MiB); a forward pass frees more than that, so the next pass takes page
    faults on much of it again. This fixes the mmap threshold at 32 MiB (where the adaptive one ends up)
    and trims only above 2 GiB. The effect on time and page faults is measured by benchmarks/bench_infer.py
    (benchmarks/README.md). Returns whether it applied (glibc only; other C libraries keep their own policy)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)
    return bool(libc.mallopt(M_MMAP_THRESHOLD, GLIBC_MMAP_CEILING) and libc.mallopt(M_TRIM_THRESHOLD, 2 ** 31 - 1))


def micro_batch_size(cfg: Config, device: torch.device) -> int:
    """Clips per backbone pass (0: the whole batch): `train.micro_batch`, or automatically the whole batch
    on CUDA and, on the CPU, the choice measured fastest by batch size in the micro-batch tables of
    benchmarks/README.md (benchmarks/bench_train.py and benchmarks/bench_infer.py at the published size):
    the whole batch (`train.batch_size` clips) while an activation of the model's width for the whole
    batch (persons x T x joints x C, fp32) stays under glibc's mmap ceiling (GLIBC_MMAP_CEILING), where
    micro-batches save fewer page faults than their recomputation in training costs; above it nearly every
    activation gets fresh pages from the kernel at each operation and the page faults dominate, so the
    backbone runs on micro-batches of the most clips whose widest activation (the qkv or MLP projection)
    stays under the ceiling."""
    if cfg.train.micro_batch is not None:
        clips = cfg.train.micro_batch
    elif device.type != "cpu":
        clips = 0
    else:
        clip_tokens = 2 * cfg.data.clip_len * cfg.model.num_joints
        widest = max(3 * cfg.model.dim_rep, int(cfg.model.dim_rep * cfg.model.mlp_ratio))
        whole_batch = cfg.train.batch_size * clip_tokens * cfg.model.dim_rep * 4 < GLIBC_MMAP_CEILING
        clips = cfg.train.batch_size if whole_batch else max(1, GLIBC_MMAP_CEILING // (clip_tokens * widest * 4))
    if 0 < clips < cfg.train.batch_size:
        log.info(f"backbone on {clips} clips at a time (train.micro_batch)")
    return clips


CPU_LOADER_WORKERS = 2
# Training clips/s that one loader worker prepares, and that the compiled model trains on one GPU, at the
# published size: benchmarks/bench_gpu.py on an H200 machine (benchmarks/README.md, "GPU"; 793 clips/s per
# worker on its Xeon, 318 clips/s at batch 32).
WORKER_CLIPS_PER_SECOND = 790.0
GPU_CLIPS_PER_SECOND = 320.0


def loader_workers(cfg: Config, device: torch.device) -> int:
    """DataLoader processes: `data.num_workers`, or automatically 2 on the CPU (where the model, not the
    loader, is the bottleneck) and on CUDA as many as prepare twice what the compiled model trains on
    (GPU_CLIPS_PER_SECOND / WORKER_CLIPS_PER_SECOND), and never fewer than the CPU's 2, so that a host CPU
    slower than the one measured still keeps up; at most one per core but one."""
    if cfg.data.num_workers is not None:
        return cfg.data.num_workers
    if device.type != "cuda":
        return CPU_LOADER_WORKERS
    needed = max(CPU_LOADER_WORKERS, math.ceil(2 * GPU_CLIPS_PER_SECOND / WORKER_CLIPS_PER_SECOND))
    return max(1, min(needed, (os.cpu_count() or 2) - 1))


# Imported once by the forkserver, so that each loader worker it forks starts with them loaded.
LOADER_WORKER_MODULES = ["torch", "numpy", "lib.data.dataset", "lib.engine.pretraining"]


def data_loader(dataset, device: torch.device, num_workers: int, **kwargs) -> torch.utils.data.DataLoader:
    """torch's DataLoader, its worker processes started by multiprocessing's forkserver instead of forked from
    this process. A fork copies this process as it is, locks included: with other threads running (gloo's,
    tqdm's monitor), a worker could start holding a lock that nobody will release, hang at once, and hang
    the run (it was seen under torchrun). The forkserver is a single-threaded process started once per
    process; workers are forked from it, with the modules of LOADER_WORKER_MODULES already imported, and
    receive the dataset pickled (a SkeletonStore travels as references to its memory-mapped files, so the
    keypoints are still shared, not copied). benchmarks/bench_faults.py measures the cost per epoch.
    `kwargs` go to DataLoader as they are."""
    if num_workers > 0:
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(LOADER_WORKER_MODULES)
        owner_watch = functools.partial(prepare_loader_worker, os.getpid())
        kwargs.update(multiprocessing_context=context, worker_init_fn=owner_watch)
    return torch.utils.data.DataLoader(dataset, num_workers=num_workers, pin_memory=device.type == "cuda", **kwargs)


def prepare_loader_worker(owner: int, worker_id: int):
    """In each loader worker: Ctrl-C is left to the main process (which saves and stops cleanly), and the
    worker ends as soon as the process that owns its DataLoader (`owner`) has ended, whatever the worker is
    doing. (Its parent is the forkserver, which lives as long as any worker does: torch's own check, for a
    changed parent, never fires.)"""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=exit_when_ended, args=(owner,), name="owner-watch", daemon=True).start()


def exit_when_ended(pid: int):
    """Wait until process `pid` has ended, then end this process at once (status 1)."""
    try:
        handle = os.pidfd_open(pid)
    except (AttributeError, OSError):  # no pidfd (not Linux, or a kernel before 5.3): poll
        while _running(pid):
            time.sleep(1)
    else:
        select.select([handle], [], [])
    os._exit(1)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


PR_SET_PDEATHSIG = 1  # prctl option (linux/prctl.h)


def die_with_parent() -> bool:
    """Have the kernel SIGKILL this process when its parent process dies (Linux; elsewhere a no-op that
    returns False): a rank whose torchrun was killed ends whatever it is doing (a hung process would
    otherwise live on, holding its GPU)."""
    if sys.platform != "linux":
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        return False
    if os.getppid() == 1:  # the parent died before the request: nobody is left to wait for this process
        os._exit(1)
    return True


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on CUDA when enabled; a no-op on the CPU."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled and device.type == "cuda")


def seed_everything(seed: int):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class TqdmHandler(logging.StreamHandler):
    """Console handler that prints above progress bars instead of through them; warnings and errors go
    to stderr, so they never mix with a command's results on stdout."""

    def emit(self, record):
        tqdm.write(self.format(record), file=sys.stderr if record.levelno >= logging.WARNING else sys.stdout)


def setup_logging(log_file: Path = None, quiet: bool = False):
    """Messages of lib.* at INFO and above (WARNING when quiet) go to the console and, with timestamps,
    to `log_file`. Each line once."""
    LIB_LOGGER.setLevel(logging.WARNING if quiet else logging.INFO)
    LIB_LOGGER.propagate = False
    for handler in list(LIB_LOGGER.handlers):
        LIB_LOGGER.removeHandler(handler)
        handler.close()
    console = TqdmHandler()
    console.setFormatter(logging.Formatter("%(message)s"))
    LIB_LOGGER.addHandler(console)
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(log_file)
        file_handler.setFormatter(logging.Formatter("[%(asctime)s] %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S"))
        LIB_LOGGER.addHandler(file_handler)
