"""Shared by the tests that call entry scripts in-process: tests/test_video.py, tests/test_deploy.py and
tests/test_video_backends.py."""
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# A tiny model trained for one epoch: enough for files and formats, not for accuracy.
TINY = ["--set", "epochs=1", "--set", "batch_size=4", "--set", "clip_len=16", "--set", "maxlen=16",
        "--set", "dim_rep=16", "--set", "num_heads=2", "--set", "hidden_dim=32", "--set", "num_workers=0",
        "--set", "device=cpu"]


def load_script(relative: str):
    """An entry script under ROOT (e.g. deployment/infer_action.py) as a module, to call its main here."""
    spec = importlib.util.spec_from_file_location(Path(relative).stem, ROOT / relative)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
