"""Runs that survive the cluster, with a real two-process torchrun (gloo on the CPU): -r auto, torchrun's
elastic restarts after a SIGKILLed worker, SIGTERM then -r auto, a rank stuck in validation, a killed
launcher. Each fault is injected by a launcher script that patches the code under test in the rank
processes only, then runs the real train_action.py."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from benchmarks.bench_faults import alive, descendants
from test_distributed import SEED_ARGS, tiny  # noqa: F401 (tiny: a fixture)

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 3
BATCHES_PER_EPOCH = 5  # per process: 40 training clips, 4 clips a batch, 2 processes
TIMEOUT = 300

# Runs train_action.py as `python train_action.py ARGS` would, after patching one fault into the rank
# processes (FAULT, FAULT_RANK, FAULT_AT: the fault, the rank it hits, the 1-based training sample read in
# epoch 2 at which it comes). Guarded by __main__: loader workers started by the forkserver import this
# file too.
FAULT_LAUNCHER = """
import os, runpy, signal, sys, time
sys.path[0] = {root!r}

if __name__ == "__main__":
    from lib.data.dataset import ActionDataset
    from lib.engine.classification import ClassificationTask

    fault, at = os.environ["FAULT"], int(os.environ.get("FAULT_AT", "0"))
    hit = (os.environ["RANK"] == os.environ["FAULT_RANK"] and os.environ["TORCHELASTIC_RESTART_COUNT"] == "0")
    read_sample, validate, reads = ActionDataset.__getitem__, ClassificationTask.validate, 0

    def read_and_fail(self, i):
        global reads
        if hit and self.train and self.epoch == 1:
            reads += 1
            if reads == at and fault == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            if reads == at and fault == "term":
                signal.raise_signal(signal.SIGTERM)
        return read_sample(self, i)

    def hang():
        while True:  # stuck for good: the loop records SIGTERM, and nothing here looks at it
            time.sleep(1)

    def validate_or_hang(self, *args, **kwargs):
        if hit and fault == "hang":
            hang()
        return validate(self, *args, **kwargs)

    def step_or_hang(*args, **kwargs):
        if hit and fault == "hang_in_step":
            hang()
        return training_step(*args, **kwargs)

    training_step = ClassificationTask.training_step
    ActionDataset.__getitem__, ClassificationTask.validate = read_and_fail, validate_or_hang
    ClassificationTask.training_step = staticmethod(step_or_hang)
    sys.argv[0] = "train_action.py"
    runpy.run_path("train_action.py", run_name="__main__")
"""


@pytest.fixture(scope="module")
def faults(tiny):
    """test_distributed's tiny run (its pickle and overrides) for EPOCHS epochs, and the fault launcher."""
    folder, overrides = tiny
    launcher = folder / "train_with_fault.py"
    launcher.write_text(FAULT_LAUNCHER.format(root=str(ROOT)))
    return folder, overrides + ["--set", f"epochs={EPOCHS}"], launcher


def torchrun(script, *args, torchrun_args=(), env=None, timeout=TIMEOUT):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               *torchrun_args, str(script), *SEED_ARGS, *map(str, args)]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, OMP_NUM_THREADS="1", **(env or {})))


def assert_ok(result):
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@pytest.fixture(scope="module")
def uninterrupted(faults):
    """The reference: the whole run in one go, with -r auto in an empty folder."""
    folder, overrides, _ = faults
    out = folder / "uninterrupted"
    result = torchrun("train_action.py", "--checkpoint", out, *overrides, "-r", "auto")
    assert_ok(result)
    return out, result


def final_state(out: Path) -> dict:
    return torch.load(out / "latest_epoch.bin", weights_only=True)


def assert_same_weights(out: Path, reference: Path):
    ours, theirs = final_state(out), final_state(reference)
    assert ours["progress"]["epoch"] == theirs["progress"]["epoch"] == EPOCHS
    for key, value in theirs["model"].items():
        assert torch.equal(ours["model"][key], value), key
    for index, state in theirs["optimizer"]["state"].items():
        for name, value in state.items():
            assert torch.equal(ours["optimizer"]["state"][index][name], value), (index, name)


def epochs_logged(out: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_auto_resume_in_an_empty_folder_starts_fresh(uninterrupted):
    out, result = uninterrupted
    assert f"-r auto: no {out / 'latest_epoch.bin'} yet; starting fresh" in result.stdout
    assert "resumed from" not in result.stdout
    assert epochs_logged(out) == [1, 2, 3]


def test_a_sigkilled_worker_is_restarted_by_torchrun_and_the_run_ends_as_an_uninterrupted_one(faults, uninterrupted):
    """Rank 1 is SIGKILLed while it reads its third batch of epoch 2; latest_epoch.bin is written after every
    batch (a tiny ckpt_every_minutes), so the group torchrun restarts continues from epoch 2, batch 2."""
    folder, overrides, launcher = faults
    out = folder / "killed"
    result = torchrun(launcher, "--checkpoint", out, *overrides, "--set", "ckpt_every_minutes=0.00001", "-r", "auto",
                      torchrun_args=["--max-restarts=2"], env={"FAULT": "kill", "FAULT_RANK": "1", "FAULT_AT": "9"})
    assert_ok(result)
    # the survivor waited for the killed rank in a collective operation: one line, no traceback
    assert "error: rank 0 of 2: " in result.stderr and "Traceback" not in result.stderr, result.stderr[-3000:]
    log = (out / "run_action.log").read_text()
    assert log.count("starting fresh") == 1
    assert f"resumed from {out / 'latest_epoch.bin'}: epoch 2, batch 2," in log
    assert "(torchrun restart 1 of at most 2)" in log
    assert epochs_logged(out) == [1, 2, 3]
    assert_same_weights(out, uninterrupted[0])


def test_sigterm_in_mid_epoch_then_the_same_command_with_auto_resume_ends_as_an_uninterrupted_run(faults, uninterrupted):
    folder, overrides, launcher = faults
    out = folder / "preempted"
    args = ("--checkpoint", out, *overrides, "-r", "auto")
    stopped = torchrun(launcher, *args, env={"FAULT": "term", "FAULT_RANK": "0", "FAULT_AT": "4"})
    assert stopped.returncode != 0
    assert "exitcode: 143" in stopped.stderr  # 128 + SIGTERM, what a requeue script sees
    log = (out / "run_action.log").read_text()
    assert f"stopped by signal 15 in epoch 2 after batch 1; saved {out / 'latest_epoch.bin'}; continue with -r auto " \
           "(exit status 143)" in log
    progress = final_state(out)["progress"]
    assert (progress["epoch"], progress["next_batch"]) == (1, 1)
    resumed = torchrun("train_action.py", *args)
    assert_ok(resumed)
    assert f"resumed from {out / 'latest_epoch.bin'}: epoch 2, batch 1," in resumed.stdout
    assert epochs_logged(out) == [1, 2, 3]
    assert_same_weights(out, uninterrupted[0])


def test_auto_resume_refuses_the_checkpoint_of_another_configuration_in_one_line(faults, uninterrupted):
    folder, overrides, _ = faults
    out = folder / "another"
    shutil.copytree(uninterrupted[0], out)
    before = (out / "latest_epoch.bin").stat().st_mtime_ns
    result = torchrun("train_action.py", "--checkpoint", out, *overrides, "--set", "lr_head=0.001", "-r", "auto")
    assert result.returncode != 0
    message = (f"error: {out / 'latest_epoch.bin'} belongs to a run with train.lr_head = 0.003, but this command "
               "has train.lr_head = 0.001: continue it with the settings of its config.yaml, or give this run "
               "another --checkpoint folder")
    assert message in result.stderr.splitlines()
    assert "lib/engine" not in result.stderr  # no traceback of ours
    assert (out / "latest_epoch.bin").stat().st_mtime_ns == before
    # the settings that do not change a step may differ: a finished run continues to more epochs
    extended = torchrun("train_action.py", "--checkpoint", out, *overrides, "--set", f"epochs={EPOCHS + 1}",
                        "--set", "num_workers=2", "-r", "auto")
    assert_ok(extended)
    assert f"resumed from {out / 'latest_epoch.bin'}: epoch {EPOCHS + 1}, batch 0" in extended.stdout
    assert epochs_logged(out) == [1, 2, 3, 4]


def test_a_rank_stuck_in_validation_ends_the_run_with_an_error_naming_the_operation(faults):
    """Rank 1 hangs in epoch 1's validation; rank 0 waits in the gathering of the predictions for
    dist_timeout_minutes (6 s), then exits with one line; torchrun stops rank 1 (SIGKILL after its 30 s grace,
    since a hung process ignores SIGTERM) and the run ends with an error instead of hanging."""
    folder, overrides, launcher = faults
    out = folder / "hung"
    start = time.monotonic()
    result = torchrun(launcher, "--checkpoint", out, *overrides, "--set", "dist_timeout_minutes=0.1",
                      env={"FAULT": "hang", "FAULT_RANK": "1"}, timeout=120)
    elapsed = time.monotonic() - start
    assert result.returncode != 0
    assert ("error: rank 0 of 2: all_gather_object during validation, epoch 1 failed: another process died, or hung "
            "past train.dist_timeout_minutes") in result.stderr
    assert elapsed < 6 + 30 + 40, elapsed


def loader_workers(pids: set[int]) -> list[int]:
    """The processes among `pids` that a forkserver started."""
    def parent(pid):
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    workers = []
    for pid in pids:
        try:
            if b"forkserver" in Path(f"/proc/{parent(pid)}/cmdline").read_bytes():
                workers.append(pid)
        except OSError:
            continue
    return workers


def test_ranks_and_their_loader_workers_die_with_a_killed_launcher(faults):
    """torchrun SIGKILLed while rank 1 hangs in its first training step and rank 0 waits for it, each with
    2 loader workers (started by its forkserver): every process below torchrun ends within seconds."""
    folder, overrides, launcher = faults
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(launcher),
               *SEED_ARGS, "--checkpoint", str(folder / "orphans"), *overrides, "--set", "num_workers=2",
               "--set", "epochs=100"]
    launcher_process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        env=dict(os.environ, OMP_NUM_THREADS="1", FAULT="hang_in_step", FAULT_RANK="1"))
    try:
        deadline = time.monotonic() + 120
        below = set()
        while len(loader_workers(below)) < 2 * 2 and time.monotonic() < deadline:
            time.sleep(0.5)
            below = descendants(launcher_process.pid)
        assert len(loader_workers(below)) == 2 * 2, below  # both ranks' workers run
        launcher_process.kill()
        launcher_process.wait()
        deadline = time.monotonic() + 20
        while any(alive(pid) for pid in below) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [pid for pid in below if alive(pid)]
    finally:
        for pid in [launcher_process.pid, *descendants(launcher_process.pid)]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


SRUN_STUB = """#!/bin/bash
# srun on one node: drop srun's own options, run the command
while [[ "$1" == --* ]]; do shift; done
exec "$@"
"""
# scontrol: the head node's name; a requeue is recorded and, as SLURM would, SIGTERM goes to the job's step
SCONTROL_STUB = """#!/bin/bash
if [[ "$1" == show ]]; then echo localhost; exit 0; fi
echo "$@" >> "$REQUEUE_LOG"
pkill -TERM -P "$PPID"
"""


def test_the_sbatch_script_requeues_near_its_time_limit_and_the_requeued_job_continues(faults, tmp_path):
    """scripts/slurm_train.sbatch under stand-ins for srun and scontrol on one node: USR1 (what SLURM sends
    5 minutes before the time limit) makes it requeue the job; the SIGTERM that follows saves
    latest_epoch.bin at a batch and the script exits non-zero; the requeued job, the same script, continues."""
    folder, overrides, _ = faults
    stubs = tmp_path / "bin"
    stubs.mkdir()
    for name, text in (("srun", SRUN_STUB), ("scontrol", SCONTROL_STUB)):
        (stubs / name).write_text(text)
        (stubs / name).chmod(0o755)
    out = tmp_path / "slurm_run"
    env = dict(os.environ, PATH=f"{stubs}:{Path(sys.executable).parent}:{os.environ['PATH']}", OMP_NUM_THREADS="1",
               SLURM_JOB_NODELIST="localhost", SLURM_JOB_ID="4242", SLURM_JOB_NUM_NODES="1", SLURM_GPUS_ON_NODE="2",
               OUT=str(out), REQUEUE_LOG=str(tmp_path / "requeued.txt"))
    command = ["bash", "scripts/slurm_train.sbatch", *overrides, "--set", "epochs=1000"]
    job = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (out / "metrics.jsonl").exists() or not (out / "metrics.jsonl").read_text():
            assert time.monotonic() < deadline and job.poll() is None, job.stdout.read()[-3000:]
            time.sleep(0.2)
        job.send_signal(signal.SIGUSR1)
        output, _ = job.communicate(timeout=90)
    finally:
        job.kill()
    assert job.returncode != 0, output[-3000:]
    assert "time limit near, requeueing job 4242" in output
    assert (tmp_path / "requeued.txt").read_text().split() == ["requeue", "4242"]
    log = (out / "run_action.log").read_text()
    assert "stopped by signal 15" in log and "continue with -r auto (exit status 143)" in log
    stopped = final_state(out)["progress"]
    assert stopped["epoch"] < 1000

    requeued = subprocess.run(["bash", "scripts/slurm_train.sbatch", *overrides, "--set", f"epochs={stopped['epoch'] + 1}"],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert requeued.returncode == 0, requeued.stdout[-3000:] + requeued.stderr[-3000:]
    assert f"resumed from {out / 'latest_epoch.bin'}: epoch {stopped['epoch'] + 1}, batch {stopped['next_batch']}," in \
        (out / "run_action.log").read_text()
    assert final_state(out)["progress"]["epoch"] == stopped["epoch"] + 1
