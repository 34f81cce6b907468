"""Bad input through a real command (python -m lib.data.summary): one line on stderr, non-zero exit,
no traceback; and a good pickle is summarised with class names."""
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lib.data import synthetic

ROOT = Path(__file__).resolve().parents[1]
DEMO_CONFIG = ROOT / "configs/action/demo_synthetic.yaml"


def run_summary(*args):
    return subprocess.run([sys.executable, "-m", "lib.data.summary", "--config", str(DEMO_CONFIG), *map(str, args)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)


def data_args(pickle_path: Path):
    return ["--set", f"data_root={pickle_path.parent}", "--set", f"dataset={pickle_path.stem}"]


@pytest.fixture(scope="module")
def demo_data():
    return synthetic.generate("demo", seed=1, num_samples=60)


@pytest.fixture
def write(tmp_path):
    def write_data(data, name="demo_small"):
        path = tmp_path / f"{name}.pkl"
        with open(path, "wb") as f:
            pickle.dump(data, f, protocol=4)
        return path
    return write_data


def assert_one_line_error(result, *fragments):
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_a_good_pickle_is_summarised_with_class_names(demo_data, write):
    path = write(demo_data)
    result = run_summary(*data_args(path))
    assert result.returncode == 0, result.stderr
    assert f"{path}: 60 samples" in result.stdout
    assert "xsub_train:" in result.stdout and "xsub_val:" in result.stdout
    assert "first clip [2, 32, 17, 3] float32" in result.stdout
    names = (ROOT / "configs/action/ntu60_classes.txt").read_text().splitlines()
    shown = {names[synthetic.parse_frame_dir(a["frame_dir"])["action"] - 1].rstrip(".")
             for a in demo_data["annotations"]}
    assert any(f"'{name}'" in result.stdout for name in shown)
    assert (path.parent / ".cache" / path.stem / "meta.json").is_file()


def test_missing_pickle(tmp_path):
    assert_one_line_error(run_summary(*data_args(tmp_path / "absent.pkl")), "dataset pickle not found", "absent.pkl")


def test_truncated_pickle(demo_data, write):
    path = write(demo_data)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert_one_line_error(run_summary(*data_args(path)), "corrupt or truncated")


class CreatesFile:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_pickle_that_runs_code_is_refused_and_runs_nothing(demo_data, write, tmp_path):
    target = tmp_path / "pwned.txt"
    data = dict(demo_data, annotations=[dict(demo_data["annotations"][0], label=CreatesFile(str(target)))])
    result = run_summary(*data_args(write(data)))
    assert_one_line_error(result, "refusing to load", "refused global")
    assert not target.exists()


def test_nan_keypoints_name_the_sample(demo_data, write):
    annotations = [dict(a) for a in demo_data["annotations"]]
    bad = annotations[3]
    bad["keypoint"] = bad["keypoint"].copy()
    bad["keypoint"][0, 0, 0, 0] = np.nan
    result = run_summary(*data_args(write(dict(demo_data, annotations=annotations))))
    assert_one_line_error(result, "NaN or infinite", bad["frame_dir"])


def test_label_outside_the_class_count(demo_data, write):
    result = run_summary(*data_args(write(demo_data)), "--set", "action_classes=10")
    assert_one_line_error(result, "outside the labels 0..9", "action_classes")


def test_unknown_split(demo_data, write):
    data = dict(demo_data, split={k: v for k, v in demo_data["split"].items() if k.startswith("xsub")})
    result = run_summary(*data_args(write(data)), "--set", "data_split=xview")
    assert_one_line_error(result, "data_split 'xview' needs the splits xview_train and xview_val", "it has xsub_train, xsub_val", "its data_split values: xsub")


def test_config_typo_and_bad_value():
    assert_one_line_error(run_summary("--set", "batchsize=4"), "did you mean 'batch_size'")
    assert_one_line_error(run_summary("--set", "clip_len=-3"), "data.clip_len", ">= 1")


def test_ntu120_xview_config_error():
    result = subprocess.run(
        [sys.executable, "-m", "lib.data.summary", "--config", "configs/action/train_NTU120_xsub_small.yaml",
         "--set", "data_split=xview"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert_one_line_error(result, "use data_split: xset")
