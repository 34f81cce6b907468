"""Action segments from overlapping window predictions (lib.deploy.segments) on hand-made windows of 10
frames every 5 at 10 fps: joining equal windows, boundaries at the midpoints between window centres, gaps,
the switching margin, unknown, the minimum length, mean scores, rows per track, the JSON and CSV files,
the timeline picture (lib.video.render.draw_segments) and out-of-range settings."""
import csv
import json

import numpy as np
import pytest
from matplotlib.image import imread

from lib.deploy.segments import CSV_HEADER, check_settings, segments, segments_by_row, write_segments
from lib.engine.matching import UNKNOWN
from lib.errors import UserError
from lib.video.render import draw_segments

FPS = 10
NAMES = ["walk", "run", "jump"]


def window(i: int, scores, stride: int = 5, start: int = 0, **extra) -> dict:
    """The i-th window of 10 frames every `stride` from `start`, with class probabilities [K]."""
    return {"frames": [start + stride * i, start + stride * i + 10], "probabilities": np.array(scores), **extra}


def confident(label: int, p: float = 0.8) -> list:
    """Probability p for `label`, the rest shared by the other classes."""
    scores = [(1 - p) / (len(NAMES) - 1)] * len(NAMES)
    scores[label] = p
    return scores


def windows(labels: list, **kwargs) -> list[dict]:
    return [window(i, confident(label), **kwargs) for i, label in enumerate(labels)]


def spans(found: list[dict]) -> list[tuple]:
    return [(s["class"], s["first_frame"], s["last_frame"]) for s in found]


def test_equal_windows_join_and_order_does_not_matter():
    predictions = [window(i, confident(label, p)) for i, (label, p) in
                   enumerate([(0, 0.6), (0, 0.7), (0, 0.8), (1, 0.9), (1, 0.9), (1, 0.6)])]
    found = segments(predictions[::-1], NAMES, FPS, 0, 0)
    # windows 2 and 3 have centres 15 and 20: the boundary is round(17.5) = 18
    assert spans(found) == [("walk", 0, 17), ("run", 18, 34)]
    assert [s["label"] for s in found] == [0, 1]
    assert [s["windows"] for s in found] == [3, 3]
    assert [(s["start_s"], s["end_s"]) for s in found] == [(0.0, 1.8), (1.8, 3.5)]
    assert [s["mean_probability"] for s in found] == [0.7, 0.8]
    assert all("track" not in s and "mean_similarity" not in s for s in found)


def test_boundaries_at_the_midpoints_between_window_centres():
    # every 6 frames: centres 5, 11, 17, 23; midpoints 8, 14, 20; the last window ends at 28
    found = segments(windows([0, 1, 2, 0], stride=6), NAMES, FPS, 0, 0)
    assert spans(found) == [("walk", 0, 7), ("run", 8, 13), ("jump", 14, 19), ("walk", 20, 27)]
    # every 5 frames the midpoints fall on halves: Python's round takes the even frame (7.5 -> 8, 12.5 -> 12)
    found = segments(windows([0, 1, 2, 0]), NAMES, FPS, 0, 0)
    assert spans(found) == [("walk", 0, 7), ("run", 8, 11), ("jump", 12, 17), ("walk", 18, 24)]


def test_a_gap_splits_segments():
    # the third window starts at 40, after the second one's end (15): the person was absent in between
    predictions = windows([0, 0]) + windows([0, 0], start=40)
    assert spans(segments(predictions, NAMES, FPS, 0, 0)) == [("walk", 0, 14), ("walk", 40, 54)]
    # a window that starts where the previous one ends is no gap
    assert spans(segments(windows([0, 0], stride=10), NAMES, FPS, 0, 0)) == [("walk", 0, 19)]
    # a short segment is not merged across a gap, even with a minimum length
    predictions = windows([0, 0, 0]) + windows([1], start=60)
    assert spans(segments(predictions, NAMES, FPS, 5, 0)) == [("walk", 0, 19), ("run", 60, 69)]


def test_switching_margin():
    walk = window(0, [0.5, 0.4, 0.1])
    run_by_little = [0.42, 0.52, 0.06]  # run wins by 0.1
    run_by_more = [0.3, 0.6, 0.1]  # run wins by 0.3
    predictions = [walk, window(1, run_by_little), window(2, run_by_more), window(3, run_by_little)]
    # margin 0.2: window 1 keeps walk, window 2 switches, window 3 stays run
    assert spans(segments(predictions, NAMES, FPS, 0, 0.2)) == [("walk", 0, 11), ("run", 12, 24)]
    # margin 0.05: window 1 already switches
    assert spans(segments(predictions, NAMES, FPS, 0, 0.05)) == [("walk", 0, 7), ("run", 8, 24)]
    # margin 0.5: nothing switches; the mean is walk's probability in each window
    found = segments(predictions, NAMES, FPS, 0, 0.5)
    assert spans(found) == [("walk", 0, 24)]
    assert found[0]["mean_probability"] == round((0.5 + 0.42 + 0.3 + 0.42) / 4, 4)


def gallery_window(i: int, name: str, similarities: list) -> dict:
    return {"frames": [5 * i, 5 * i + 10], "class": name, "similarities": np.array(similarities), "track": 7}


def test_unknown_switches_at_once():
    predictions = [gallery_window(0, "walk", [0.9, 0.3, 0.2]), gallery_window(1, "walk", [0.8, 0.3, 0.2]),
                   gallery_window(2, "unknown", [0.35, 0.4, 0.2]), gallery_window(3, "walk", [0.7, 0.3, 0.2])]
    found = segments(predictions, NAMES, FPS, 0, 1)
    assert spans(found) == [("walk", 0, 11), ("unknown", 12, 17), ("walk", 18, 24)]
    assert [s["label"] for s in found] == [0, UNKNOWN, 0]
    assert [s["track"] for s in found] == [7, 7, 7]
    # unknown: the window's highest similarity
    assert [s["mean_similarity"] for s in found] == [0.85, 0.4, 0.7]
    assert all("mean_probability" not in s for s in found)


def test_gallery_class_decides_and_the_margin_applies_between_classes():
    predictions = [gallery_window(0, "walk", [0.9, 0.3, 0.2]), gallery_window(1, "jump", [0.5, 0.3, 0.6])]
    assert spans(segments(predictions, NAMES, FPS, 0, 0.2)) == [("walk", 0, 14)]
    assert spans(segments(predictions, NAMES, FPS, 0, 0.05)) == [("walk", 0, 7), ("jump", 8, 14)]


def test_minimum_length_merges_a_blip_into_its_longer_neighbour():
    # boundaries 0, 8, 12, 18, 22, 28, 32, 40: walk [0, 12), run [12, 18) (6 frames), jump [18, 40)
    predictions = windows([0, 0, 1, 2, 2, 2, 2])
    assert spans(segments(predictions, NAMES, FPS, 0, 0)) == [("walk", 0, 11), ("run", 12, 17), ("jump", 18, 39)]
    found = segments(predictions, NAMES, FPS, 1.0, 0)  # at least 10 frames: walk (12) stays
    assert spans(found) == [("walk", 0, 11), ("jump", 12, 39)]
    assert found[1]["windows"] == 5
    assert found[1]["mean_probability"] == round((0.1 + 4 * 0.8) / 5, 4)  # the blip's jump probability is 0.1
    # neighbours of equal length: the earlier one takes the blip
    assert spans(segments(windows([0, 0, 1, 2, 2]), NAMES, FPS, 1.0, 0)) == [("walk", 0, 17), ("jump", 18, 29)]
    # a blip between two segments of the same class joins all three
    assert spans(segments(windows([0, 0, 1, 0, 0]), NAMES, FPS, 1.0, 0)) == [("walk", 0, 29)]
    # a single segment is kept however short
    assert spans(segments(windows([1]), NAMES, FPS, 5, 0)) == [("run", 0, 9)]


def test_rows_by_track():
    predictions = []
    for i in range(4):
        predictions.append(window(i, confident(1), track=3))
        predictions.append(window(i, confident(0 if i < 2 else 2), track=1))
    rows = segments_by_row(predictions, NAMES, FPS, 0, 0)
    assert list(rows) == [3, 1]
    assert spans(rows[3]) == [("run", 0, 24)]
    assert spans(rows[1]) == [("walk", 0, 11), ("jump", 12, 24)]
    assert all(s["track"] == track for track, row in rows.items() for s in row)
    scene = segments_by_row(windows([0, 0]), NAMES, FPS, 0, 0)
    assert list(scene) == [None] and "track" not in scene[None][0]


def test_json_and_csv_files(tmp_path):
    rows = {None: segments(windows([0, 0, 1, 1]), NAMES, FPS, 0, 0),
            2: segments([gallery_window(0, "unknown", [0.3, 0.2, 0.1]) | {"track": 2}], NAMES, FPS, 0, 0)}
    info = {"video": "a.mp4", "model": "m.onnx", "fps": FPS, "min_segment_s": 0, "switch_margin": 0}
    write_segments(rows, tmp_path / "s.json", tmp_path / "s.csv", info)
    written = json.loads((tmp_path / "s.json").read_text())
    assert {k: written[k] for k in info} == info
    assert [(s["class"], s.get("track")) for s in written["segments"]] == [("walk", None), ("run", None),
                                                                            ("unknown", 2)]
    assert written["segments"][0] == rows[None][0]
    with open(tmp_path / "s.csv", newline="") as f:
        table = list(csv.reader(f))
    assert table[0] == CSV_HEADER == ["track", "class", "first_frame", "last_frame", "start_s", "end_s",
                                      "mean_score", "windows"]
    assert table[1:] == [["", "walk", "0", "11", "0.0", "1.2", "0.8", "2"],
                         ["", "run", "12", "24", "1.2", "2.5", "0.8", "2"],
                         ["2", "unknown", "0", "9", "0.0", "1.0", "0.3", "1"]]


def test_timeline_picture(tmp_path):
    person = segments(windows([0, 0, 0, 1, 2, 2]), NAMES, FPS, 0, 0)
    unknown = segments([gallery_window(0, "unknown", [0.3, 0.2, 0.1])], NAMES, FPS, 0, 0)
    draw_segments({4: person}, NAMES, 3.0, tmp_path / "one.png", "a.mp4 / m.onnx")
    draw_segments({None: person, 7: unknown}, NAMES, 3.0, tmp_path / "two.png", "a.mp4 / m.onnx")
    one, two = imread(tmp_path / "one.png"), imread(tmp_path / "two.png")
    assert one.size > 0 and one.shape[1] == two.shape[1]
    assert two.shape[0] > one.shape[0]
    assert one.std() > 0  # not blank


@pytest.mark.parametrize("min_seconds, margin, message", [
    (-1, 0.1, "--min-segment must be 0 or more seconds"),
    (float("nan"), 0.1, "--min-segment must be 0 or more seconds"),
    (1, 1.5, "--switch-margin must lie between 0 and 1"),
    (1, -0.1, "--switch-margin must lie between 0 and 1"),
])
def test_out_of_range_settings(min_seconds, margin, message):
    with pytest.raises(UserError, match=message):
        check_settings(min_seconds, margin)
    with pytest.raises(UserError, match=message):
        segments(windows([0]), NAMES, FPS, min_seconds, margin)


def test_settings_at_the_limits_are_accepted():
    check_settings(0, 0)
    check_settings(2.5, 1)
