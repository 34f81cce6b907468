"""Synthetic stand-ins for the other PYSKL 2D HRNet files: FineGYM (gym_hrnet.pkl), UCF101, HMDB51, Diving48
and Kinetics-400 (a table of contents and kpfiles), each in its file's exact format.

The motions are lib/data/synthetic.py's: every class has its own drawn motion program (the same in every
file and for every seed), posed on a stick body, seen by a camera and given detector noise. What differs
per file is what the published file differs in:

| preset   | splits                                   | frame size (h, w)       | persons                    |
|----------|------------------------------------------|-------------------------|----------------------------|
| gym      | train, val                               | 360x640 to 1080x1920    | the athlete                |
| ucf101   | train1/test1, train2/test2, train3/test3 | 240x320                 | detector: 0 to 4           |
| hmdb51   | train1/test1, train2/test2, train3/test3 | 240 x 320, 352, 360, 426 | detector: 0 to 4           |
| diving48 | train, test                              | 240x426                 | the diver, 1-2 detections  |
| k400     | train, val                               | 240x320 to 1080x1920    | detector: 0 to many; kpfiles |

Sample names follow each dataset's own pattern (v_ApplyEyeMakeup_g08_c01 for UCF101, its 25 groups giving
the three official splits as UCF101's do). The k400 preset writes the table of contents at --out and its
kpfiles into kpfiles/ beside it; every raw_file is an absolute path of another machine, as in the published
file, so that the reader must find the kpfiles by base name (lib/data/kinetics.py).

CLI: python -m lib.data.synthetic --preset gym|ucf101|hmdb51|diving48|k400 --out PATH [--num-samples N]
"""
import multiprocessing
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from lib.data import synthetic as body
from lib.data.labels import PROJECT_ROOT

AUTHORS_KPFILE_FOLDER = "/mnt/authors-cluster/pyskl/k400/kpfiles"  # not on this machine, on purpose
FIRST_PROGRAM = 1000  # class c moves as the drawn program of action FIRST_PROGRAM + c (single-person)


@dataclass(frozen=True)
class FormatPreset:
    stem: str  # the published file's name, without .pkl
    num_classes: int
    num_samples: int  # the default count of videos
    frames: tuple  # (min, max) frames of a video
    img_shapes: tuple  # the frame sizes (height, width) videos are drawn from
    detector_persons: float  # mean count of extra detections (bystanders) per video
    max_extra: int  # at most this many
    nobody: float  # share of videos in which nobody was detected
    eval_share: float  # share of each class in the evaluation split (HMDB51: in each split's test half)
    class_names: str  # configs/action/ file of the class names (sample names use them)


PRESETS = {
    "gym": FormatPreset("gym_hrnet", 99, 2_970, (30, 90), ((360, 640), (720, 1280), (1080, 1920)), 0.0, 0, 0.0, 0.29,
                        "gym99_classes.txt"),
    "ucf101": FormatPreset("ucf101_hrnet", 101, 3_030, (40, 120), ((240, 320),), 0.6, 4, 0.01, 0.0,
                          "ucf101_classes.txt"),
    "hmdb51": FormatPreset("hmdb51_hrnet", 51, 1_530, (40, 120), ((240, 320), (240, 352), (240, 360), (240, 426)),
                           0.6, 4, 0.01, 0.3, "hmdb51_classes.txt"),
    "diving48": FormatPreset("diving48_hrnet", 48, 1_440, (40, 100), ((240, 426),), 0.3, 1, 0.0, 0.12,
                             "diving48_classes.txt"),
    "k400": FormatPreset("k400_hrnet", 400, 8_000, (60, 150),
                         ((240, 320), (360, 480), (360, 640), (720, 1280), (1080, 1920)), 1.5, 6, 0.03, 0.077,
                         "k400_classes.txt"),
}
UCF_GROUPS = 25  # UCF101's groups of clips; split n tests on groups 7n-6 .. 7n
CHUNK_VIDEOS = 100  # videos rendered with one random stream; a kpfile of the k400 preset


def class_names(preset: FormatPreset) -> list[str]:
    return (PROJECT_ROOT / "configs/action" / preset.class_names).read_text(encoding="utf-8").splitlines()


def youtube_id(rng) -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    return "".join(alphabet[i] for i in rng.integers(0, len(alphabet), 11))


def in_frame(keypoint: np.ndarray, score: np.ndarray, img_hw, rng) -> tuple[np.ndarray, np.ndarray]:
    """Skeletons rendered on a 1920x1080 frame (lib/data/synthetic.py) moved onto a frame of `img_hw`: scaled
    by 60-100% of the factor that fits the frame, placed at random, clipped to the frame. Joints without
    confidence stay at (0, 0), as a detector leaves them."""
    height, width = img_hw
    fit = min(width / body.IMG_SHAPE[1], height / body.IMG_SHAPE[0]) * rng.uniform(0.6, 1.0)
    shift = rng.uniform(0, 1, 2) * (np.array([width, height]) - fit * np.array(body.IMG_SHAPE[::-1]))
    moved = np.clip(keypoint * fit + shift, 0, [width - 1, height - 1])
    return np.where(score[..., None] > 0, moved, 0.0).astype(np.float32), score


def render_video(label: int, programs: dict, preset: FormatPreset, img_hw, frames: tuple,
                 rng) -> tuple[np.ndarray, np.ndarray]:
    """(keypoint [M, T, 17, 2], keypoint_score [M, T, 17]) of one video of class `label` in pixels of img_hw,
    frames[0] to frames[1] frames long: the performer, the detector's extra persons, or nobody (M = 0)."""
    num_frames = int(rng.integers(frames[0], frames[1] + 1))
    if rng.random() < preset.nobody:
        return np.zeros((0, num_frames, 17, 2), np.float32), np.zeros((0, num_frames, 17), np.float32)
    ids = dict(setup=int(rng.integers(1, 33)), camera=int(rng.integers(1, 4)), performer=int(rng.integers(1, 107)))
    keypoint, score = body.render_sample(ids, *programs[label], num_frames, rng)
    camera = body.make_camera(ids["setup"], ids["camera"], rng)
    extra = [body.bystander(num_frames, camera, rng) for _ in range(min(rng.poisson(preset.detector_persons), preset.max_extra))]
    if extra:
        keypoint = np.concatenate([keypoint, np.stack([k for k, _ in extra])]).astype(np.float32)
        score = np.concatenate([score, np.stack([s for _, s in extra])]).astype(np.float32)
    return in_frame(keypoint, score, img_hw, rng)


def sample_names(name: str, preset: FormatPreset, labels: np.ndarray, rng) -> tuple[list, list]:
    """(frame_dir per video, group per video: the UCF101 group, else 0), in each dataset's own pattern."""
    names, groups, seen = [], [], {}
    classes = class_names(preset)
    for label in labels:
        count = seen[label] = seen.get(label, 0) + 1
        group = int(rng.integers(1, UCF_GROUPS + 1))
        if name == "ucf101":
            frame_dir = f"v_{classes[label]}_g{group:02d}_c{count:02d}"
        elif name == "hmdb51":
            frame_dir = f"{youtube_id(rng)}_{classes[label]}_u_cm_np1_fr_med_{count}"
        elif name == "gym":
            start = int(rng.integers(0, 9000))
            frame_dir = f"{youtube_id(rng)}_E_{start:06d}_{start + 40:06d}_A_{count:04d}_{count + 2:04d}"
        else:
            frame_dir = f"{youtube_id(rng)}_{int(rng.integers(0, 99999)):05d}"
        names.append(frame_dir)
        groups.append(group)
    return names, groups


def make_splits(name: str, preset: FormatPreset, frame_dirs: list, labels: np.ndarray, groups: list, rng) -> dict:
    """The file's own splits: UCF101's by group, HMDB51's 70/30 per class drawn three times, the others one
    train split and one evaluation split (val, or test for Diving48) holding `eval_share` of each class."""
    if name == "ucf101":
        return {f"{half}{n}": [f for f, g in zip(frame_dirs, groups) if (7 * (n - 1) < g <= 7 * n) == (half == "test")]
                for n in (1, 2, 3) for half in ("train", "test")}
    if name == "hmdb51":
        splits = {}
        for n in (1, 2, 3):
            test = held_out(labels, preset.eval_share, rng)
            splits[f"train{n}"] = [f for f, t in zip(frame_dirs, test) if not t]
            splits[f"test{n}"] = [f for f, t in zip(frame_dirs, test) if t]
        return splits
    test = held_out(labels, preset.eval_share, rng)
    evaluation = "test" if name == "diving48" else "val"
    return {"train": [f for f, t in zip(frame_dirs, test) if not t], evaluation: [f for f, t in zip(frame_dirs, test) if t]}


def held_out(labels: np.ndarray, share: float, rng) -> np.ndarray:
    """A mask holding out `share` of each class's videos (at least one, and one kept, where a class has two)."""
    mask = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        count = min(max(1, round(share * len(members))), len(members) - 1) if len(members) > 1 else 0
        mask[members[:count]] = True
    return mask


@dataclass(frozen=True)
class Chunk:
    """CHUNK_VIDEOS consecutive videos of a file (a kpfile's worth for k400), rendered with their own random
    stream, so that the content does not depend on how many processes write it."""
    name: str
    index: int
    frame_dirs: tuple
    labels: tuple
    seed: int
    frames: tuple  # (min, max) frames of a video

    def render(self) -> list[dict]:
        """The chunk's annotations in the NTU layout (keypoint arrays in each)."""
        preset = PRESETS[self.name]
        rng = np.random.default_rng([self.seed, preset.num_classes, self.index])
        programs = {}
        annotations = []
        for frame_dir, label in zip(self.frame_dirs, self.labels):
            if label not in programs:
                program = body.action_program(FIRST_PROGRAM + label)
                programs[label] = (body.compile_action(program), program.distance)
            img_hw = preset.img_shapes[int(rng.integers(len(preset.img_shapes)))]
            keypoint, score = render_video(label, programs, preset, img_hw, self.frames, rng)
            annotations.append({"frame_dir": frame_dir, "label": label, "img_shape": img_hw,
                                "original_shape": img_hw, "total_frames": keypoint.shape[1],
                                "keypoint": keypoint, "keypoint_score": score})
        return annotations

    def write_kpfile(self, folder: Path, stem: str) -> list[dict]:
        """Write the chunk as a Kinetics kpfile ({frame_dir: {'keypoint': [N, 17, 3]}}) into `folder`; return its
        table-of-contents entries: raw_file, frame_inds, box_score and valid (frames with a skeleton at box
        thresholds 0.5-0.9) beside frame_dir, label, img_shape, original_shape and total_frames."""
        rng = np.random.default_rng([self.seed, 400, self.index, 1])
        kpfile_name = f"{stem}_part_{self.index:05d}.pkl"
        kpfile, contents = {}, []
        for ann in self.render():
            frame_inds, skeletons, box_score = compress(ann.pop("keypoint"), ann.pop("keypoint_score"), rng)
            kpfile[ann["frame_dir"]] = {"keypoint": skeletons}
            valid = {thr: int(len(np.unique(frame_inds[box_score >= thr]))) for thr in (0.5, 0.6, 0.7, 0.8, 0.9)}
            contents.append(ann | {"raw_file": f"{AUTHORS_KPFILE_FOLDER}/{kpfile_name}", "frame_inds": frame_inds,
                                   "box_score": box_score, "valid": valid})
        body.write_pickle(kpfile, folder / kpfile_name)
        return contents


def plan(name: str, seed: int, num_samples: int | None, frames: tuple | None) -> tuple[list, dict]:
    """(the chunks to render, the splits) of a preset: labels balanced over the classes, names and splits drawn."""
    preset = PRESETS[name]
    num_samples = preset.num_samples if num_samples is None else num_samples
    if num_samples < preset.num_classes:
        raise ValueError(f"--num-samples must be at least the {preset.num_classes} classes of {name}")
    rng = np.random.default_rng([seed, preset.num_classes])
    labels = np.arange(num_samples) % preset.num_classes
    frame_dirs, groups = sample_names(name, preset, labels, rng)
    splits = make_splits(name, preset, frame_dirs, labels, groups, rng)
    chunks = [Chunk(name, i // CHUNK_VIDEOS, tuple(frame_dirs[i:i + CHUNK_VIDEOS]),
                    tuple(int(v) for v in labels[i:i + CHUNK_VIDEOS]), seed, frames or preset.frames)
              for i in range(0, num_samples, CHUNK_VIDEOS)]
    return chunks, splits


def generate(name: str, seed: int = 0, num_samples: int | None = None, frames: tuple | None = None) -> dict:
    """A PYSKL dict ({'split', 'annotations'}) of a preset in the NTU layout (keypoint arrays in each
    annotation); `write` turns k400 into a table of contents and kpfiles."""
    chunks, splits = plan(name, seed, num_samples, frames)
    return {"split": splits, "annotations": [ann for chunk in chunks for ann in chunk.render()]}


def compress(keypoint: np.ndarray, score: np.ndarray, rng) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A video's skeletons the way Kinetics' kpfiles store them: (frame_inds [N], skeletons float16 [N, 17, 3],
    box_score float16 [N]), one entry per person and frame with anyone seen, frame by frame, the persons of a
    frame in random order (a detector's order is not a track)."""
    seen = score.any(-1)  # [M, T]
    persons, frames = np.nonzero(seen.T)[::-1]  # frame-major order
    shuffle = np.lexsort((rng.random(len(frames)), frames))
    persons, frames = persons[shuffle], frames[shuffle]
    skeletons = np.concatenate([keypoint[persons, frames], score[persons, frames, :, None]], axis=-1)
    box_score = np.clip(score[persons, frames].mean(-1) + rng.normal(0.1, 0.05, len(frames)), 0.05, 1.0)
    return frames.astype(np.int16), skeletons.astype(np.float16), box_score.astype(np.float16)


def _write_kpfile(job: tuple) -> list[dict]:
    chunk, folder, stem = job
    return chunk.write_kpfile(folder, stem)


def write(name: str, out: Path, seed: int = 0, num_samples: int | None = None, frames: tuple | None = None,
          processes: int = 1) -> dict:
    """Generate a preset and write it at `out`; returns what the pickle holds. k400 streams: each chunk of
    videos becomes a kpfile in {out.parent}/kpfiles/ as soon as it is rendered (in `processes` processes), so
    a file of any size is written in little memory, and `out` is its table of contents."""
    chunks, splits = plan(name, seed, num_samples, frames)
    bar = dict(desc=f"synthetic {name}", unit=f"x{CHUNK_VIDEOS} videos", mininterval=1.0)
    if name != "k400":
        data = {"split": splits, "annotations": [ann for chunk in tqdm(chunks, **bar) for ann in chunk.render()]}
    else:
        folder = out.parent / "kpfiles"
        folder.mkdir(parents=True, exist_ok=True)
        jobs = [(chunk, folder, out.stem) for chunk in chunks]
        if processes > 1:
            with multiprocessing.get_context("forkserver").Pool(processes) as pool:
                contents = list(tqdm(pool.imap(_write_kpfile, jobs), total=len(jobs), **bar))
        else:
            contents = [_write_kpfile(job) for job in tqdm(jobs, **bar)]
        data = {"split": splits, "annotations": [entry for chunk in contents for entry in chunk]}
    body.write_pickle(data, out)
    return data
