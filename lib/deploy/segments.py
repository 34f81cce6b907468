"""Action segments from one row of overlapping window predictions (one person's, or the scene's).

The windows, in order of their start frame, fall into runs: a window that starts after the previous one's
end begins a new run (the person was absent in between), and segments never cross from one run to the next.
In each run:
1. Each window's decided class: the most probable class of a classification model; of an embedding model
   with a gallery, its "class" (UNKNOWN when "unknown").
2. Switching margin: the run starts in its first window's class. A later window whose decided class differs
   switches to it when either class is UNKNOWN, or when the new class's score beats the current class's
   score in that window by more than the margin; otherwise the window keeps the current class.
3. A window stands for the frames from the midpoint between its centre and the previous window's centre to
   the midpoint with the next one (the run's first window from its start, the last to its end);
   consecutive windows of the same class form a segment.
4. Minimum length: while the run has more than one segment and one is shorter than min_seconds, the
   shortest (the earliest of equal ones) joins its longer neighbour (the earlier of equal ones) and takes
   its class; neighbours of the same class then join.

A segment's mean score is the mean over its windows of its class's probability (of a gallery: cosine
similarity; of UNKNOWN: the window's highest similarity).
"""
import csv
import json
from pathlib import Path

import numpy as np

from lib.deploy.inference import UNKNOWN_NAME
from lib.engine.matching import UNKNOWN
from lib.errors import UserError

CSV_HEADER = ["track", "class", "first_frame", "last_frame", "start_s", "end_s", "mean_score", "windows"]


def check_settings(min_seconds: float, margin: float):
    if not min_seconds >= 0:
        raise UserError(f"--min-segment must be 0 or more seconds (got {min_seconds})")
    if not 0 <= margin <= 1:
        raise UserError(f"--switch-margin must lie between 0 and 1 (got {margin})")


def decided_labels(predictions: list[dict], class_names: list[str]) -> tuple[list[int], np.ndarray]:
    """Each window's decided label (UNKNOWN for a gallery's "unknown") and the scores [windows, K]:
    probabilities, or a gallery's similarities."""
    if "probabilities" in predictions[0]:
        scores = np.stack([np.asarray(p["probabilities"]) for p in predictions])
        return [int(k) for k in scores.argmax(axis=1)], scores
    scores = np.stack([np.asarray(p["similarities"]) for p in predictions])
    return [UNKNOWN if p["class"] == UNKNOWN_NAME else class_names.index(p["class"]) for p in predictions], scores


def runs(predictions: list[dict]) -> list[range]:
    """The positions of each run of windows (sorted by start) that no gap splits."""
    gaps = [i for i in range(1, len(predictions)) if predictions[i]["frames"][0] > predictions[i - 1]["frames"][1]]
    edges = [0] + gaps + [len(predictions)]
    return [range(a, b) for a, b in zip(edges, edges[1:])]


def with_margin(decided: list[int], scores: np.ndarray, margin: float) -> list[int]:
    """The label each window of a run keeps under the switching margin; scores [windows, K]."""
    current, kept = decided[0], []
    for label, window_scores in zip(decided, scores):
        if label != current and (UNKNOWN in (label, current) or window_scores[label] - window_scores[current] > margin):
            current = label
        kept.append(current)
    return kept


def boundaries(frames: list) -> list[int]:
    """[windows + 1] frame boundaries of a run's windows ([start, end) each): the first start, the rounded
    midpoints between consecutive window centres, the last end."""
    centres = [(start + end) / 2 for start, end in frames]
    return [int(frames[0][0])] + [round((a + b) / 2) for a, b in zip(centres, centres[1:])] + [int(frames[-1][1])]


def join_equal(pieces: list[dict]) -> list[dict]:
    """Neighbouring pieces ({label, start, end, windows}) of the same label as one."""
    joined = []
    for piece in pieces:
        if joined and joined[-1]["label"] == piece["label"]:
            joined[-1] = {**joined[-1], "end": piece["end"], "windows": joined[-1]["windows"] + piece["windows"]}
        else:
            joined.append(piece)
    return joined


def merge_short(pieces: list[dict], min_frames: int) -> list[dict]:
    """Join the shortest piece into its longer neighbour while one is shorter than `min_frames`."""
    while len(pieces) > 1:
        lengths = [p["end"] - p["start"] for p in pieces]
        shortest = int(np.argmin(lengths))  # the earliest of equal ones
        if lengths[shortest] >= min_frames:
            break
        neighbours = [j for j in (shortest - 1, shortest + 1) if 0 <= j < len(pieces)]
        into = max(neighbours, key=lambda j: lengths[j])  # the earlier of equal ones
        a, b = sorted((shortest, into))
        merged = {"label": pieces[into]["label"], "start": pieces[a]["start"], "end": pieces[b]["end"],
                  "windows": pieces[a]["windows"] + pieces[b]["windows"]}
        pieces = join_equal(pieces[:a] + [merged] + pieces[b + 1:])
    return pieces


def segments(predictions: list[dict], class_names: list[str], fps: float, min_seconds: float,
             margin: float) -> list[dict]:
    """The action segments of one row of window predictions (lib.deploy.inference.predict), by the rule of
    this module's docstring, in time order."""
    check_settings(min_seconds, margin)
    if not predictions:
        return []
    predictions = sorted(predictions, key=lambda p: p["frames"][0])
    decided, scores = decided_labels(predictions, class_names)
    score_key = "mean_probability" if "probabilities" in predictions[0] else "mean_similarity"
    track = {"track": predictions[0]["track"]} if "track" in predictions[0] else {}
    result = []
    for run in runs(predictions):
        labels = with_margin(decided[run.start:run.stop], scores[run], margin)
        bounds = boundaries([predictions[i]["frames"] for i in run])
        pieces = join_equal([{"label": label, "start": bounds[i], "end": bounds[i + 1], "windows": [run.start + i]}
                             for i, label in enumerate(labels)])
        for piece in merge_short(pieces, round(min_seconds * fps)):
            label, start, end = piece["label"], piece["start"], piece["end"]
            window_scores = scores[piece["windows"]]  # [n, K]
            values = window_scores.max(axis=1) if label == UNKNOWN else window_scores[:, label]
            result.append({**track, "class": UNKNOWN_NAME if label == UNKNOWN else class_names[label],
                           "label": label, "first_frame": start, "last_frame": end - 1,
                           "start_s": round(start / fps, 3), "end_s": round(end / fps, 3),
                           "windows": len(piece["windows"]), score_key: round(float(values.mean()), 4)})
    return result


def segments_by_row(predictions: list[dict], class_names: list[str], fps: float, min_seconds: float,
                    margin: float) -> dict:
    """{track (None: the scene): its segments}, rows in order of their first prediction."""
    rows = {}
    for prediction in predictions:
        rows.setdefault(prediction.get("track"), []).append(prediction)
    return {track: segments(row, class_names, fps, min_seconds, margin) for track, row in rows.items()}


def write_segments(rows: dict, json_path, csv_path, info: dict):
    """The segments of every row ({track or None: segments}), row by row: a JSON file of `info` (video,
    model, fps, settings) with "segments", and a CSV file of CSV_HEADER (track empty for the scene)."""
    every = [segment for row in rows.values() for segment in row]
    Path(json_path).write_text(json.dumps({**info, "segments": every}, indent=2))
    with open(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_HEADER)
        for s in every:
            mean = s["mean_probability"] if "mean_probability" in s else s["mean_similarity"]
            writer.writerow([s.get("track", ""), s["class"], s["first_frame"], s["last_frame"], s["start_s"],
                             s["end_s"], mean, s["windows"]])
