"""Process-level set-up shared by the entry scripts: device, seeds, logging."""
import logging
import random
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from lib.config import Config
from lib.errors import UserError

LIB_LOGGER = logging.getLogger("lib")  # every module's logging.getLogger(__name__) reports here


def pick_device(name: str) -> torch.device:
    """'auto' is CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device '{name}' asked for, but CUDA is not available here; use --device cpu")
    return torch.device(name)


GLIBC_MMAP_CEILING = 32 * 2 ** 20  # glibc's malloc maps blocks above this fresh from the kernel, every time


def micro_batch_size(cfg: Config, device: torch.device) -> int:
    """Clips per backbone pass (0: the whole batch): `train.micro_batch`, or automatically the whole batch
    on CUDA and, on the CPU, the most clips whose widest activation (two persons x T x 17 joints x the
    widest of the qkv and MLP projections, fp32) stays under glibc's 32 MiB mmap ceiling."""
    if cfg.train.micro_batch is not None:
        return cfg.train.micro_batch
    if device.type != "cpu":
        return 0
    widest = max(3 * cfg.model.dim_rep, int(cfg.model.dim_rep * cfg.model.mlp_ratio))
    clip_bytes = 2 * cfg.data.clip_len * cfg.model.num_joints * widest * 4
    return max(1, GLIBC_MMAP_CEILING // clip_bytes)


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
