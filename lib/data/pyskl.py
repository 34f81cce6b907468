"""Reading PYSKL skeleton pickles safely, and keeping their keypoints in one compact store.

A PYSKL pickle is a dict with `split` ({name: [frame_dir, ...]}) and `annotations` (a list of dicts
with `frame_dir`, `label`, `img_shape` (h, w), `total_frames`, `keypoint` [M, T, 17, 2] in COCO-17
order and pixels, `keypoint_score` [M, T, 17]).

The same layout holds NTU RGB+D 60 / 120, FineGYM, UCF101, HMDB51 and Diving48; Kinetics-400's pickle is
a table of contents whose skeletons are in kpfiles (lib/data/kinetics.py packs those). A sample in which
nobody was detected (no persons or no frames) is kept, and read as an all-zero clip.

`load_store(path)` reads such a file with an unpickler that admits only builtins and numpy arrays,
validates every sample, and packs the variable-length keypoints of all samples into one contiguous
array with offsets (`SkeletonStore`). The packed arrays are written as .npy files to `.cache/` beside
the pickle and memory-mapped, so a second start takes well under a second, memory holds the keypoints
once, and DataLoader workers share the pages instead of copying them: a store pickles its mapped arrays
as references to their files, so a worker started by the forkserver (lib/engine/runtime.data_loader) maps
the same files instead of receiving a copy. The cache is rebuilt when the pickle's size or modification
time (or, for Kinetics, a kpfile) changes.
"""
import _compat_pickle
import concurrent.futures
import fcntl
import json
import logging
import mmap
import multiprocessing
import os
import pickle
import shutil
import tempfile
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lib.errors import UserError

log = logging.getLogger(__name__)

NUM_COCO_JOINTS = 17
CACHE_FORMAT = 2

# The globals a pickle of builtin containers and numpy arrays needs, across numpy 1.x and 2.x.
_ALLOWED_GLOBALS = {
    ("builtins", name) for name in ("set", "frozenset", "complex", "slice", "bytearray", "range")
} | {
    (module, name)
    for module in ("numpy.core.multiarray", "numpy._core.multiarray")
    for name in ("_reconstruct", "scalar")
} | {
    (module, "_frombuffer") for module in ("numpy.core.numeric", "numpy._core.numeric")
} | {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles builtin containers and numpy arrays; refuses every other global (no code can run)."""

    def find_class(self, module, name):
        # Protocol 0-2 pickles name builtins the Python 2 way (__builtin__.set); compare modern names.
        modern = _compat_pickle.NAME_MAPPING.get(
            (module, name), (_compat_pickle.IMPORT_MAPPING.get(module, module), name))
        if modern in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused global '{module}.{name}'")


def read_pickle(path) -> dict:
    """Read a PYSKL pickle through RestrictedUnpickler; every failure is a one-line UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"dataset pickle not found: {path}. Download it into {path.parent}/ "
                        "(see data/action/README.md) or write a synthetic stand-in with "
                        f"'python -m lib.data.synthetic --preset demo|ntu60|ntu120|gym|ucf101|hmdb51|diving48|k400 --out {path}'")
    try:
        with open(path, "rb") as f:
            data = RestrictedUnpickler(f).load()
    except pickle.UnpicklingError as e:
        reason = " ".join(str(e).split())
        if reason.startswith("refused global"):
            raise UserError(f"refusing to load {path}: it is not plain skeleton data ({reason}); "
                            "only builtins and numpy arrays are allowed, so nothing in it was run") from None
        raise UserError(f"cannot read {path}: corrupt or truncated pickle ({reason}); download it again") from None
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, MemoryError, ImportError,
            OverflowError) as e:
        reason = " ".join(str(e).split())
        raise UserError(f"cannot read {path}: corrupt or truncated pickle ({type(e).__name__}: {reason}); "
                        "download it again") from None
    if not isinstance(data, dict) or "split" not in data or "annotations" not in data:
        raise UserError(f"{path} is not a PYSKL skeleton pickle: expected a dict with 'split' and 'annotations'")
    if not isinstance(data["split"], dict) or not isinstance(data["annotations"], list):
        raise UserError(f"{path} is not a PYSKL skeleton pickle: 'split' must be a dict and 'annotations' a list")
    return data


# The dtype kinds a sample's numbers may have: signed / unsigned integers and floating point. Refused:
# bool (True / False are not coordinates, confidences or sizes), complex, strings, bytes, objects,
# structured records, dates and times.
REAL_KINDS = "iuf"


def _show(value) -> str:
    """A short one-line repr of a value for an error message."""
    text = " ".join(repr(value).split())
    return text if len(text) <= 60 else text[:57] + "..."


def _dtype_error(path, name, key: str, value) -> UserError:
    example = "np.float32" if key.startswith("keypoint") else "np.int64"
    return UserError(f"{path}: sample {name} has {key} of dtype {value.dtype}, expected real numbers (integer or "
                     f"floating point, not bool, complex, strings or objects); convert it (e.g. numpy "
                     f".astype({example})) or remove the sample")


def _check_real_array(value: np.ndarray, path, name, key: str):
    """A keypoint / keypoint_score array must hold integers or floating point numbers."""
    if value.dtype.kind not in REAL_KINDS:
        raise _dtype_error(path, name, key, value)


def _whole_number(value):
    """The int of a Python / numpy integer, of a whole finite float, or of a 0-d integer or floating-point
    array; None for anything else (bool, complex, strings, objects, fractions)."""
    if isinstance(value, np.ndarray):
        if value.ndim != 0 or value.dtype.kind not in REAL_KINDS:
            return None
        value = value[()]
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)) and np.isfinite(value) and float(value).is_integer():
        return int(value)
    return None


def _check_image_shape(value, path, name, key: str):
    """img_shape / original_shape: (height, width), two positive whole numbers (a tuple, a list or a 1-d
    integer or floating-point array)."""
    expected = "expected (height, width): two positive whole numbers"
    if isinstance(value, np.ndarray) and value.dtype.kind not in REAL_KINDS:
        raise _dtype_error(path, name, key, value)
    if not (isinstance(value, (tuple, list)) or isinstance(value, np.ndarray) and value.ndim == 1) or len(value) != 2:
        raise UserError(f"{path}: sample {name} has {key} {_show(value)}, {expected}")
    sizes = [_whole_number(item) for item in value]
    if None in sizes:
        kinds = "/".join(sorted({type(item).__name__ for item in value}))
        raise UserError(f"{path}: sample {name} has {key} {_show(value)} ({kinds}), {expected}; set it to the "
                        "frame size in pixels as integers or remove the sample")
    if not all(0 < size < 2 ** 31 for size in sizes):
        raise UserError(f"{path}: sample {name} has {key} {_show(value)}, {expected}")


def check_annotation(ann, path) -> tuple[np.ndarray, np.ndarray]:
    """Validate one annotation; return its (keypoint [M, T, 17, 2], keypoint_score [M, T, 17]).

    Every number of a sample must be real: keypoint and keypoint_score integer or floating-point arrays,
    img_shape and original_shape (optional) two positive integers or whole floats, total_frames (optional)
    a whole number, label a non-negative integer. bool, complex, string and object values are refused."""
    name = ann["frame_dir"]
    for key in ("label", "img_shape", "keypoint", "keypoint_score"):
        if key not in ann:
            raise UserError(f"{path}: sample {name} has no '{key}'; the file does not follow the PYSKL format")
    kp, score = ann["keypoint"], ann["keypoint_score"]
    if not isinstance(kp, np.ndarray) or kp.ndim != 4 or kp.shape[2:] != (NUM_COCO_JOINTS, 2):
        shape = getattr(kp, "shape", type(kp).__name__)
        raise UserError(f"{path}: sample {name} has keypoint of shape {shape}, expected [M, T, 17, 2]")
    if not isinstance(score, np.ndarray) or score.shape != kp.shape[:3]:
        shape = getattr(score, "shape", type(score).__name__)
        raise UserError(f"{path}: sample {name} has keypoint_score of shape {shape}, expected {kp.shape[:3]}")
    _check_real_array(kp, path, name, "keypoint")
    _check_real_array(score, path, name, "keypoint_score")
    if "total_frames" in ann:
        total = _whole_number(ann["total_frames"])
        if total is None:
            raise UserError(f"{path}: sample {name} has total_frames {_show(ann['total_frames'])} "
                            f"({type(ann['total_frames']).__name__}), expected a whole number of frames; "
                            f"set it to {kp.shape[1]} (the frames of its keypoints) or remove it")
        if total != kp.shape[1]:
            raise UserError(f"{path}: sample {name} has total_frames {total} "
                            f"but {kp.shape[1]} frames of keypoints")
    check_finite(path, name, kp, score)
    check_label_and_shapes(ann, path, name)
    return kp, score


def check_finite(path, name, *arrays):
    if not all(np.isfinite(array).all() for array in arrays):
        raise UserError(f"{path}: sample {name} has NaN or infinite keypoints; fix or remove it")


def check_label_and_shapes(ann: dict, path, name):
    """label a non-negative integer; img_shape and original_shape (optional) (height, width) in pixels."""
    label = ann["label"]
    if isinstance(label, (bool, np.bool_)) or not isinstance(label, (int, np.integer)) or label < 0:
        raise UserError(f"{path}: sample {name} has label {_show(label)} ({type(label).__name__}), "
                        "expected a non-negative integer; fix the label or remove the sample")
    _check_image_shape(ann["img_shape"], path, name, "img_shape")
    if "original_shape" in ann:
        _check_image_shape(ann["original_shape"], path, name, "original_shape")


@dataclass
class SkeletonStore:
    """All samples of a pickle, packed. Sample i's keypoints are rows offset[i]:offset[i+1] of
    `keypoint`, to be reshaped to [persons[i], frames[i], 17, 2] (`raw_sample(i)`)."""

    keypoint: np.ndarray  # [F, 17, 2], F = sum over samples of persons * frames
    score: np.ndarray  # [F, 17]
    offset: np.ndarray  # int64 [S + 1]
    persons: np.ndarray  # int32 [S]
    frames: np.ndarray  # int32 [S]
    label: np.ndarray  # int64 [S]
    img_hw: np.ndarray  # int32 [S, 2] (height, width)
    frame_dir: np.ndarray  # str [S]
    splits: dict  # {split name: int64 array of sample indices}
    source: str = ""
    tracked: bool = False  # persons already selected and tracked (preprocess.select_and_track), as Kinetics packs them

    def __len__(self) -> int:
        return len(self.label)

    def raw_sample(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(keypoint [M, T, 17, 2], keypoint_score [M, T, 17]), views into the store (read-only)."""
        shape = (int(self.persons[i]), int(self.frames[i]), NUM_COCO_JOINTS)
        rows = slice(self.offset[i], self.offset[i + 1])
        return self.keypoint[rows].reshape(shape + (2,)), self.score[rows].reshape(shape)

    def split_indices(self, split: str) -> np.ndarray:
        if split not in self.splits:
            available = ", ".join(sorted(self.splits)) or "none"
            raise UserError(f"split '{split}' is not in {self.source} (available: {available}); "
                            "check data_split in the config")
        return self.splits[split]

    @property
    def raw_nbytes(self) -> int:
        return self.keypoint.nbytes + self.score.nbytes

    def __getstate__(self) -> dict:
        """Memory-mapped arrays travel as (file, dtype, shape, offset): a loader worker in another process
        maps the same file (the pages are shared) instead of unpickling a copy of the keypoints."""
        return {name: (MappedArray(value.filename, value.dtype.str, value.shape, value.offset)
                       if _is_whole_mapping(value) else value) for name, value in vars(self).items()}

    def __setstate__(self, state: dict):
        for name, value in state.items():
            setattr(self, name, value.open() if isinstance(value, MappedArray) else value)


def _is_whole_mapping(array) -> bool:
    """An array that np.load mapped from a whole .npy file (not a view into one)."""
    return isinstance(array, np.memmap) and isinstance(array.base, mmap.mmap)


@dataclass(frozen=True)
class MappedArray:
    """A read-only memory-mapped array by reference (see SkeletonStore.__getstate__)."""
    filename: str
    dtype: str
    shape: tuple
    offset: int

    def open(self) -> np.memmap:
        return np.memmap(self.filename, dtype=np.dtype(self.dtype), mode="r", shape=self.shape, offset=self.offset)


def _write_npy_stream(path: Path, dtype, shape, parts):
    """Write an .npy file part by part (C order), so the whole array never exists in memory."""
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape})
        for part in parts:
            if part.size:  # an empty sample has no rows (and memoryview cannot cast an empty shape)
                f.write(memoryview(np.ascontiguousarray(part, dtype=dtype)).cast("B"))


def check_splits(data: dict, path) -> tuple[np.ndarray, dict, list[str]]:
    """(frame_dir per annotation, {split name: [annotation position, ...]}, notes for the log) of a read
    pickle: frame_dir values must be unique; split members without annotation are skipped with a note."""
    annotations = data["annotations"]
    if not annotations:
        raise UserError(f"{path} holds no annotations")
    for i, ann in enumerate(annotations):
        if not isinstance(ann, dict):
            raise UserError(f"{path}: annotation {i} is not a dict")
        if "frame_dir" not in ann:
            raise UserError(f"{path}: annotation {i} has no 'frame_dir'; the file does not follow the PYSKL format")
    frame_dir = np.array([str(ann["frame_dir"]) for ann in annotations])
    position = {name: i for i, name in enumerate(frame_dir)}
    if len(position) != len(frame_dir):
        raise UserError(f"{path}: frame_dir values are not unique; each sample needs its own frame_dir")
    splits, notes = {}, []
    for name, members in data["split"].items():
        found = [position[m] for m in members if m in position]
        if len(found) < len(members):
            notes.append(f"{path}: split '{name}' lists {len(members) - len(found)} frame_dir(s) without "
                         "annotation; they are skipped")
        splits[str(name)] = found
    return frame_dir, splits, notes


def empty_note(path, frame_dir: np.ndarray, empty: np.ndarray) -> list[str]:
    """The log line counting the samples without any skeleton (boolean mask `empty`), or none."""
    if not empty.any():
        return []
    return [f"{path}: {int(empty.sum()):,} of {len(empty):,} samples have no skeleton with non-zero confidence "
            f"(e.g. {frame_dir[np.argmax(empty)]}: nobody was detected); they are kept as all-zero clips"]


def write_small_arrays(folder: Path, meta: dict, **arrays):
    """The per-sample arrays as .npy files, then meta.json, written last: its presence marks a complete folder."""
    for name, array in arrays.items():
        np.save(folder / f"{name}.npy", array)
    (folder / "meta.json").write_text(json.dumps(meta))


def pack_to_folder(data: dict, path, folder: Path, fingerprint: dict):
    """Validate the annotations of a read pickle and write them, packed, as .npy files plus meta.json
    into `folder` (the layout `open_packed` maps)."""
    annotations = data["annotations"]
    frame_dir, splits, notes = check_splits(data, path)
    checked = [check_annotation(ann, path) for ann in annotations]
    notes += empty_note(path, frame_dir, np.array([not score.any() for _, score in checked]))
    persons = np.array([kp.shape[0] for kp, _ in checked], dtype=np.int32)
    frames = np.array([kp.shape[1] for kp, _ in checked], dtype=np.int32)
    offset = np.zeros(len(checked) + 1, dtype=np.int64)
    np.cumsum(persons.astype(np.int64) * frames, out=offset[1:])
    rows = int(offset[-1])
    _write_npy_stream(folder / "keypoint.npy", np.result_type(*{kp.dtype for kp, _ in checked}),
                      (rows, NUM_COCO_JOINTS, 2), (kp for kp, _ in checked))
    _write_npy_stream(folder / "score.npy", np.result_type(*{score.dtype for _, score in checked}),
                      (rows, NUM_COCO_JOINTS), (score for _, score in checked))
    write_small_arrays(
        folder, dict(fingerprint, splits=splits, notes=notes), offset=offset, persons=persons, frames=frames,
        frame_dir=frame_dir, label=np.array([int(ann["label"]) for ann in annotations], dtype=np.int64),
        img_hw=np.array([tuple(int(v) for v in ann["img_shape"]) for ann in annotations], dtype=np.int32))


def sources_unchanged(meta: dict) -> bool:
    """Whether the extra files a store was packed from (a Kinetics table of contents' kpfiles, recorded in
    meta.json as {path: [size, mtime_ns]}) are still there as they were."""
    for name, (size, mtime_ns) in meta.get("sources", {}).items():
        try:
            stat = os.stat(name)
        except OSError:
            return False
        if (stat.st_size, stat.st_mtime_ns) != (size, mtime_ns):
            return False
    return True


def open_packed(folder: Path, fingerprint: dict, path):
    """The store in a packed folder (keypoints memory-mapped), or None when the folder is missing,
    incomplete, or made from another version of the pickle (or of its kpfiles). Its notes are logged."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    if any(meta.get(k) != v for k, v in fingerprint.items()) or not sources_unchanged(meta):
        return None
    try:
        arrays = {name: np.load(folder / f"{name}.npy", mmap_mode="r" if name in ("keypoint", "score") else None)
                  for name in _ARRAYS}
    except (OSError, ValueError):
        return None
    for note in meta.get("notes", []):
        log.info(note)
    splits = {k: np.array(v, dtype=np.int64) for k, v in meta["splits"].items()}
    return SkeletonStore(**arrays, splits=splits, source=str(path), tracked=meta.get("tracked", False))


# ---------------------------------------------------------------------------------------------------------
# The cache

_ARRAYS = ("keypoint", "score", "offset", "persons", "frames", "label", "img_hw", "frame_dir")


@dataclass(frozen=True)
class PackSettings:
    """What, besides the pickle, decides a packed store: for a Kinetics table of contents (lib/data/kinetics.py)
    the folder of its kpfiles and the box-score threshold. Other pickles ignore both."""
    kpfiles: str
    box_thr: float | None = None


def _cache_dir(path: Path, settings: PackSettings) -> Path:
    suffix = "" if settings.box_thr is None else f"-box{settings.box_thr:g}"
    return path.parent / ".cache" / f"{path.stem}{suffix}"


def _fingerprint(path: Path, settings: PackSettings) -> dict:
    stat = path.stat()
    return {"format": CACHE_FORMAT, "source_size": stat.st_size, "source_mtime_ns": stat.st_mtime_ns,
            "box_thr": settings.box_thr}


def _pack_pickle(path: Path, folder: Path, fingerprint: dict, settings: PackSettings):
    data = read_pickle(path)
    from lib.data import kinetics  # it builds on this module
    if kinetics.is_table_of_contents(data):
        kinetics.pack_table_of_contents(data, path, folder, fingerprint, settings)
    else:
        pack_to_folder(data, path, folder, fingerprint)


def _pack_in_child_process(path: Path, folder: Path, fingerprint: dict, settings: PackSettings):
    """Parse and pack the pickle in a separate process: the parsed pickle (as large as the keypoints)
    never lives in the caller, whose memory would otherwise stay at twice the keypoints after the
    allocator keeps the freed pages. UserErrors come back as they were raised."""
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        pool.submit(_pack_pickle, path, folder, fingerprint, settings).result()


def _open_just_packed(folder: Path, fingerprint: dict, path) -> SkeletonStore:
    store = open_packed(folder, fingerprint, path)
    assert store is not None, f"{folder} was just packed but cannot be opened"
    return store


def load_store(path, use_cache: bool = True, settings: PackSettings | None = None) -> SkeletonStore:
    """The SkeletonStore of a PYSKL pickle (or of a Kinetics table of contents and its kpfiles). The packed
    keypoints are written to disk and memory-mapped: in the cache beside the pickle (reused while the pickle,
    its kpfiles and `settings` are unchanged), or, without cache or when it cannot be written, in a temporary
    folder removed when the store is (or when the process exits): loader workers map its files as long as the
    store lives. Without `settings`: a Kinetics table of contents finds its kpfiles in kpfiles/ beside it."""
    path = Path(path)
    if not path.is_file():
        read_pickle(path)  # raises the "not found" UserError
    settings = settings or PackSettings(kpfiles=str(path.parent / "kpfiles"))
    cache, fingerprint = _cache_dir(path, settings), _fingerprint(path, settings)
    if use_cache:
        store = open_packed(cache, fingerprint, path)
        if store is not None:
            return store
        tmp = cache.with_name(f"{cache.name}.tmp-{os.getpid()}")
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            lock = os.open(cache.parent, os.O_RDONLY)
            try:
                # One process packs; the others (DDP ranks, parallel jobs) wait, then map its cache.
                fcntl.flock(lock, fcntl.LOCK_EX)
                store = open_packed(cache, fingerprint, path)
                if store is not None:
                    return store
                shutil.rmtree(tmp, ignore_errors=True)
                tmp.mkdir(parents=True)
                _pack_in_child_process(path, tmp, fingerprint, settings)
                shutil.rmtree(cache, ignore_errors=True)  # a stale cache of an older version of the pickle
                os.replace(tmp, cache)
                return _open_just_packed(cache, fingerprint, path)
            finally:
                os.close(lock)  # releases the lock
        except OSError as e:
            log.warning("could not write the keypoint cache in %s (%s); the pickle will be parsed again "
                        "on the next start", cache, e)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    folder = Path(tempfile.mkdtemp(prefix="skeleton-store-"))
    try:
        _pack_in_child_process(path, folder, fingerprint, settings)
        store = _open_just_packed(folder, fingerprint, path)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    # Tied to the keypoint array, which the stores derived from this one (dataclasses.replace) share.
    weakref.finalize(store.keypoint, shutil.rmtree, folder, ignore_errors=True)
    return store
