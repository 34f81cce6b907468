"""keep_freed_memory: tensors freed by one forward pass are reused by the next without page faults."""
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Allocate, touch and free 24 tensors of 8 MiB (like the activations of a forward pass) three times; print
# the minor page faults of the last two rounds and the number of 4 KiB pages they touched.
WORKLOAD = """
import resource, sys
import torch
sys.path.insert(0, {root!r})
if {keep}:
    from lib.engine.runtime import keep_freed_memory
    assert keep_freed_memory()

def forward_pass():
    tensors = [torch.empty(2 * 2 ** 20).fill_(1.0) for _ in range(24)]
    del tensors

forward_pass()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
forward_pass()
forward_pass()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before, 2 * 24 * 8 * 2 ** 20 // 4096)
"""


def glibc_defaults_env() -> dict:
    """This process's environment without the variables that tune glibc's malloc (MALLOC_ARENA_MAX,
    MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_, ... and GLIBC_TUNABLES): the child starts with glibc's
    default policy whatever the shell running the tests exports."""
    return {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}


def page_faults(keep: bool) -> tuple[int, int]:
    out = subprocess.run([sys.executable, "-c", WORKLOAD.format(root=str(ROOT), keep=keep)], check=True,
                         capture_output=True, text=True, env=glibc_defaults_env()).stdout
    faults, pages = map(int, out.split())
    return faults, pages


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="tunes glibc's malloc")
def test_freed_tensors_are_reused_without_page_faults():
    faults, pages = page_faults(keep=True)
    assert faults < 0.2 * pages, f"{faults} page faults for {pages} pages of reused memory"
    default_faults, _ = page_faults(keep=False)
    assert default_faults > 0.5 * pages, "glibc's default returned no memory: this test no longer shows the effect"
