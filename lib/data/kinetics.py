"""Kinetics-400 skeletons as PYSKL publishes them: a table of contents (k400_hrnet.pkl) and kpfiles.

The table of contents is a PYSKL pickle whose annotations carry no keypoint arrays. Each has `frame_dir`,
`label`, `img_shape`, `total_frames`, `raw_file` (the authors' path of the kpfile holding the video's
skeletons), `frame_inds` [N] (the frame of each skeleton) and `box_score` [N] (each skeleton's detection
score); `original_shape` and `valid` are optional. A kpfile is a pickle of {frame_dir: {'keypoint': float16
[N, 17, 3]}} (x, y, score per COCO joint), the N skeletons of a video in the order of its `frame_inds`.

`pack_table_of_contents` reads every kpfile once (no memcached, no server) into the same packed,
memory-mapped SkeletonStore as the other PYSKL files (lib/data/pyskl.py):
* `raw_file` is found in the kpfile folder (data.kpfiles, default {data_root}/kpfiles) by its base name,
  since the stored paths are the authors' own;
* skeletons below the box-score threshold (data.box_thr, PYSKL's box_thr; null keeps all) are dropped;
* `regroup` puts the skeletons into frames and persons as PYSKL's DecompressPose does: frames without
  anyone are dropped, and a frame's k-th skeleton (in stored order) is person k;
* of the persons, the two with the highest total keypoint score over the video are kept and tracked
  (lib.data.preprocess.select_and_track, what every clip of the other files goes through), so the store
  holds at most two, and making a clip skips that step (SkeletonStore.tracked);
* a video in which nobody was detected is kept as an empty clip (all zeros) and counted in the log.
Coordinates and scores are stored as float16, the kpfiles' own precision.
"""
import io
import os
from collections import defaultdict
from pathlib import Path

import numpy as np
from tqdm import tqdm

from lib.data.preprocess import NUM_PERSONS, select_and_track
from lib.data.pyskl import (NUM_COCO_JOINTS, PackSettings, RestrictedUnpickler, check_finite,
                            check_label_and_shapes, check_splits, empty_note, write_small_arrays)
from lib.errors import UserError

TOC_KEYS = ("label", "img_shape", "raw_file", "frame_inds")
STORE_DTYPE = np.dtype(np.float16)


def is_table_of_contents(data: dict) -> bool:
    """Whether a read PYSKL pickle is a Kinetics table of contents (skeletons in kpfiles, not in the pickle)."""
    first = data["annotations"][0] if data["annotations"] else None
    return isinstance(first, dict) and "keypoint" not in first and "raw_file" in first


def regroup(frame_inds: np.ndarray, skeletons: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Skeletons [N, 17, 3] (x, y, score) with the frame of each [N] -> (keypoint [M, T, 17, 2], keypoint_score
    [M, T, 17]): T the frames with anyone in them, in order; M the most skeletons in any frame; the k-th
    skeleton of a frame (in stored order) is person k, the slots a frame does not fill are zeros. N = 0 gives
    M = T = 0."""
    frames, frame_pos, counts = np.unique(frame_inds, return_inverse=True, return_counts=True)
    num_persons = int(counts.max()) if len(counts) else 0
    order = np.argsort(frame_pos, kind="stable")  # skeletons grouped by frame, stored order within a frame
    first_of_frame = np.cumsum(counts) - counts
    slot = np.empty(len(frame_inds), dtype=np.int64)
    slot[order] = np.arange(len(frame_inds)) - first_of_frame[frame_pos[order]]
    keypoint = np.zeros((num_persons, len(frames), NUM_COCO_JOINTS, 2), dtype=skeletons.dtype)
    score = np.zeros((num_persons, len(frames), NUM_COCO_JOINTS), dtype=skeletons.dtype)
    keypoint[slot, frame_pos] = skeletons[..., :2]
    score[slot, frame_pos] = skeletons[..., 2]
    return keypoint, score


def _index_array(ann: dict, key: str, path, name, kind: str) -> np.ndarray:
    value = ann[key]
    if not isinstance(value, (np.ndarray, list, tuple)) or np.ndim(value) != 1:
        raise UserError(f"{path}: sample {name} has {key} of type {type(value).__name__}, expected a 1-d array")
    value = np.asarray(value)
    if len(value) and value.dtype.kind not in kind:
        raise UserError(f"{path}: sample {name} has {key} of dtype {value.dtype}, expected "
                        f"{'integers' if kind == 'iu' else 'real numbers'}")
    return value


def _kept(ann: dict, path, name, box_thr) -> np.ndarray:
    """The frame of each skeleton of a video, and which skeletons pass the box-score threshold."""
    frame_inds = _index_array(ann, "frame_inds", path, name, "iu")
    keep = np.ones(len(frame_inds), dtype=bool)
    if len(frame_inds) and frame_inds.min() < 0:
        raise UserError(f"{path}: sample {name} has a negative frame index in frame_inds")
    if box_thr is not None:
        if "box_score" not in ann:
            raise UserError(f"{path}: sample {name} has no 'box_score', which data.box_thr needs; "
                            "set box_thr: null")
        box_score = _index_array(ann, "box_score", path, name, "iuf")
        if len(box_score) != len(frame_inds):
            raise UserError(f"{path}: sample {name} has {len(box_score)} box_score values for "
                            f"{len(frame_inds)} frame_inds")
        keep = box_score >= box_thr
    return frame_inds, keep


class _Plan:
    """Where every video's skeletons go: its kpfile, its kept skeletons, its persons and frames."""

    def __init__(self, data: dict, path, settings: PackSettings):
        folder = Path(settings.kpfiles)
        annotations = data["annotations"]
        self.frame_inds, self.keep = [], []
        self.persons = np.zeros(len(annotations), dtype=np.int32)
        self.frames = np.zeros(len(annotations), dtype=np.int32)
        self.by_kpfile = defaultdict(list)  # kpfile path -> positions of its videos
        for i, ann in enumerate(annotations):
            name = ann["frame_dir"]
            if "keypoint" in ann or not all(key in ann for key in TOC_KEYS):
                missing = [key for key in TOC_KEYS if key not in ann]
                raise UserError(f"{path}: sample {name} is not a Kinetics table-of-contents entry (it has "
                                f"{'keypoint' if 'keypoint' in ann else 'no ' + ', '.join(missing)}); "
                                "every annotation of a table of contents needs raw_file and frame_inds")
            check_label_and_shapes(ann, path, name)
            frame_inds, keep = _kept(ann, path, name, settings.box_thr)
            self.frame_inds.append(frame_inds)
            self.keep.append(keep)
            if keep.any():
                counts = np.unique(frame_inds[keep], return_counts=True)[1]
                self.frames[i] = len(counts)
                self.persons[i] = min(int(counts.max()), NUM_PERSONS)
            if len(frame_inds):
                if not isinstance(ann["raw_file"], str):
                    raise UserError(f"{path}: sample {name} has raw_file {ann['raw_file']!r}, expected a path")
                self.by_kpfile[folder / Path(ann["raw_file"].replace("\\", "/")).name].append(i)
        missing = sorted(kpfile for kpfile in self.by_kpfile if not kpfile.is_file())
        if missing:
            example = annotations[self.by_kpfile[missing[0]][0]]
            raise UserError(f"kpfile {missing[0].name} not found in {folder}/ (raw_file {example['raw_file']} of "
                            f"sample {example['frame_dir']}{f' and {len(missing) - 1} more kpfiles' if len(missing) > 1 else ''}); "
                            "unzip PYSKL's kpfiles there or set data.kpfiles to their folder")
        self.offset = np.zeros(len(annotations) + 1, dtype=np.int64)
        np.cumsum(self.persons.astype(np.int64) * self.frames, out=self.offset[1:])


def _npy_header(dtype, shape) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buffer, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape})
    return buffer.getvalue()


class _RowFile:
    """An .npy file of known shape [rows, ...] whose rows are written at their place, in any order, with
    pwrite: the process maps none of it, so its memory stays small whatever the file's size."""

    def __init__(self, path: Path, row_shape: tuple, rows: int):
        self.row_bytes = STORE_DTYPE.itemsize * int(np.prod(row_shape))
        header = _npy_header(STORE_DTYPE, (rows,) + row_shape)
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(self.fd, header)
        os.ftruncate(self.fd, len(header) + rows * self.row_bytes)
        self.start = len(header)

    def write(self, row: int, values: np.ndarray):
        if values.size == 0:  # a video in which nobody was detected has no rows
            return
        data = memoryview(np.ascontiguousarray(values, dtype=STORE_DTYPE)).cast("B")
        written = os.pwrite(self.fd, data, self.start + row * self.row_bytes)
        assert written == len(data), f"short write: {written} of {len(data)} bytes"

    def close(self):
        os.close(self.fd)


def _read_kpfile(kpfile: Path) -> dict:
    try:
        with open(kpfile, "rb") as f:
            content = RestrictedUnpickler(f).load()
    except Exception as e:  # any failure to parse is the file's fault, said in one line
        reason = " ".join(str(e).split())[:120]
        raise UserError(f"cannot read kpfile {kpfile}: {type(e).__name__}: {reason}; unzip it again") from None
    if not isinstance(content, dict):
        raise UserError(f"kpfile {kpfile} holds a {type(content).__name__}, expected a dict "
                        "{frame_dir: {'keypoint': [N, 17, 3]}}")
    return content


def _skeletons(content: dict, kpfile: Path, name: str, count: int) -> np.ndarray:
    """The [N, 17, 3] skeletons of video `name` in a kpfile, checked against its `count` frame_inds."""
    if name not in content:
        raise UserError(f"kpfile {kpfile} has no skeletons of sample {name}; the table of contents and the "
                        "kpfiles are from different releases: download both again")
    entry = content[name]
    skeletons = entry.get("keypoint") if isinstance(entry, dict) else None
    if not isinstance(skeletons, np.ndarray) or skeletons.ndim != 3 or skeletons.shape[1:] != (NUM_COCO_JOINTS, 3):
        shape = getattr(skeletons, "shape", type(skeletons).__name__)
        raise UserError(f"kpfile {kpfile}: sample {name} has keypoint of shape {shape}, expected [N, 17, 3]")
    if skeletons.dtype.kind != "f":
        raise UserError(f"kpfile {kpfile}: sample {name} has keypoint of dtype {skeletons.dtype}, expected floats")
    if len(skeletons) != count:
        raise UserError(f"kpfile {kpfile}: sample {name} has {len(skeletons)} skeletons but {count} frame_inds "
                        "in the table of contents; they must be of the same length")
    return skeletons


def pack_table_of_contents(data: dict, path, folder: Path, fingerprint: dict, settings: PackSettings):
    """Validate a Kinetics table of contents, read its kpfiles and write the packed store into `folder`
    (the layout pyskl.open_packed maps). Every video is written once, at its rows."""
    frame_dir, splits, notes = check_splits(data, path)
    plan = _Plan(data, path, settings)
    rows = int(plan.offset[-1])
    keypoint_file = _RowFile(folder / "keypoint.npy", (NUM_COCO_JOINTS, 2), rows)
    score_file = _RowFile(folder / "score.npy", (NUM_COCO_JOINTS,), rows)
    try:
        for kpfile in tqdm(sorted(plan.by_kpfile), desc=f"reading the kpfiles of {Path(path).name}", unit="file",
                           mininterval=2.0):
            content = _read_kpfile(kpfile)
            for i in plan.by_kpfile[kpfile]:
                skeletons = _skeletons(content, kpfile, frame_dir[i], len(plan.frame_inds[i]))
                check_finite(kpfile, frame_dir[i], skeletons)
                keypoint, score = select_and_track(*regroup(plan.frame_inds[i][plan.keep[i]], skeletons[plan.keep[i]]))
                assert keypoint.shape[:2] == (plan.persons[i], plan.frames[i]), (frame_dir[i], keypoint.shape)
                keypoint_file.write(int(plan.offset[i]), keypoint.reshape(-1, NUM_COCO_JOINTS, 2))
                score_file.write(int(plan.offset[i]), score.reshape(-1, NUM_COCO_JOINTS))
            del content
    finally:
        keypoint_file.close()
        score_file.close()
    notes += empty_note(path, frame_dir, plan.frames == 0)
    sources = {str(kpfile): [kpfile.stat().st_size, kpfile.stat().st_mtime_ns] for kpfile in plan.by_kpfile}
    annotations = data["annotations"]
    write_small_arrays(
        folder, dict(fingerprint, splits=splits, notes=notes, sources=sources, tracked=True), offset=plan.offset,
        persons=plan.persons, frames=plan.frames, frame_dir=frame_dir,
        label=np.array([int(ann["label"]) for ann in annotations], dtype=np.int64),
        img_hw=np.array([tuple(int(v) for v in ann["img_shape"]) for ann in annotations], dtype=np.int32))
