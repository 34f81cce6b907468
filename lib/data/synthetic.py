"""Synthetic NTU RGB+D 60/120 skeleton datasets in the PYSKL HRNet 2D pickle format.

The files let the loader and the whole toolkit be tested and demonstrated without the real data. A file is
a pickle (protocol 4) of a plain dict holding only builtins and numpy arrays:

    {'split': {split_name: [frame_dir, ...]},
     'annotations': [{'frame_dir': 'S001C002P003R001A013', 'label': 12, 'img_shape': (1080, 1920),
                      'original_shape': (1080, 1920), 'total_frames': T,
                      'keypoint': float32 [M, T, 17, 2] (COCO-17 joints, pixels),
                      'keypoint_score': float32 [M, T, 17] in [0, 1]}, ...]}

How a sample is made:
1. Every action has a motion program (`Action`): per person, a few animated degrees of freedom
   (`Channel`: a held value plus a sine wave, a smooth ramp and a bump over the clip's progress 0..1).
   The ten actions of the demo preset are written by hand; all others are drawn from the action number,
   so an action looks the same in every file and for every seed.
2. Per sample the program is varied (amplitudes, speed, timing, posture), a 3D stick body sized after the
   performer is posed with it frame by frame (vectorised over frames), placed in the room (one person
   facing the cameras, or two people facing each other) and projected through a pinhole camera whose
   angle comes from the camera id (1: 0 deg, 2: -45 deg, 3: +45 deg) and whose distance and height come
   from the setup id.
3. Detector effects are added: pixel noise, confidences around 0.6-0.95, occluded limbs with low
   confidence, frames where a person is missing (zeros), interactions where only one person was found,
   and rare spurious low-confidence bystanders (so M can be 1, 2 or 3).

Sample ids (frame_dir `SsssCcccPpppRrrrAaaa`) are unique and follow the NTU id ranges, so the official
cross-subject, cross-view and cross-setup rules (`split_of`) give the splits. Preset ntu120_oneshot is a
small ntu120 that also holds every exemplar of the NTU120 one-shot protocol (lib/data/oneshot.py).

CLI: python -m lib.data.synthetic --preset demo|ntu60|ntu120|ntu120_oneshot --out PATH [--seed S]
     [--num-samples N]; the presets gym, ucf101, hmdb51, diving48 and k400 write the other PYSKL files'
     formats (lib/data/synthetic_formats.py).
"""
import argparse
import math
import os
import pickle
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from lib.data.oneshot import HELD_OUT_ACTIONS, NOVEL_ACTIONS, exemplar_name

# ---------------------------------------------------------------------------------------------------------
# NTU ids and the official splits

IMG_SHAPE = (1080, 1920)  # (height, width) of the NTU RGB videos
NUM_JOINTS = 17
COCO_JOINTS = ("nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
               "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
               "left_knee", "right_knee", "left_ankle", "right_ankle")

NTU60_XSUB_TRAIN_PERFORMERS = (1, 2, 4, 5, 8, 9, 13, 14, 15, 16, 17, 18, 19, 25, 27, 28, 31, 34, 35, 38)
NTU120_XSUB_TRAIN_PERFORMERS = NTU60_XSUB_TRAIN_PERFORMERS + (
    45, 46, 47, 49, 50, 52, 53, 54, 55, 56, 57, 58, 59, 70, 74, 78, 80, 81, 82, 83, 84, 85, 86, 89, 91, 92,
    93, 94, 95, 97, 98, 100, 103)
XVIEW_TRAIN_CAMERAS = (2, 3)
INTERACTION_ACTIONS = tuple(range(50, 61)) + tuple(range(106, 121))  # 1-based action numbers
NUM_CAMERAS = 3
NUM_REPLICATIONS = 2

FRAME_DIR_PATTERN = re.compile(r"S(\d{3})C(\d{3})P(\d{3})R(\d{3})A(\d{3})")


@dataclass(frozen=True)
class DatasetSpec:
    num_setups: int
    num_performers: int
    num_actions: int
    protocols: tuple  # split protocols; each gives '<protocol>_train' and '<protocol>_val'
    xsub_train_performers: tuple


DATASETS = {
    "ntu60": DatasetSpec(17, 40, 60, ("xsub", "xview"), NTU60_XSUB_TRAIN_PERFORMERS),
    "ntu120": DatasetSpec(32, 106, 120, ("xsub", "xset"), NTU120_XSUB_TRAIN_PERFORMERS),
}


def make_frame_dir(setup: int, camera: int, performer: int, replication: int, action: int) -> str:
    return f"S{setup:03d}C{camera:03d}P{performer:03d}R{replication:03d}A{action:03d}"


def parse_frame_dir(frame_dir: str) -> dict:
    """{'setup', 'camera', 'performer', 'replication', 'action'} -> int, from 'SsssCcccPpppRrrrAaaa'."""
    match = FRAME_DIR_PATTERN.fullmatch(frame_dir)
    if match is None:
        raise ValueError(f"not an NTU sample name: {frame_dir!r} (expected SsssCcccPpppRrrrAaaa)")
    return dict(zip(("setup", "camera", "performer", "replication", "action"), map(int, match.groups())))


def is_train(frame_dir: str, protocol: str, dataset: str) -> bool:
    """Whether a sample is in the training half of an official protocol (xsub, xview or xset)."""
    spec = DATASETS[dataset]
    if protocol not in spec.protocols:
        raise ValueError(f"{dataset} has no {protocol} protocol (it has {', '.join(spec.protocols)})")
    ids = parse_frame_dir(frame_dir)
    if protocol == "xsub":
        return ids["performer"] in spec.xsub_train_performers
    if protocol == "xview":
        return ids["camera"] in XVIEW_TRAIN_CAMERAS
    return ids["setup"] % 2 == 0  # xset: even setups train


def split_of(frame_dir: str, protocol: str, dataset: str) -> str:
    """The split name ('xsub_train', 'xview_val', ...) a sample belongs to under a protocol."""
    return f"{protocol}_{'train' if is_train(frame_dir, protocol, dataset) else 'val'}"


def split_names(dataset: str) -> list:
    return [f"{protocol}_{half}" for protocol in DATASETS[dataset].protocols for half in ("train", "val")]


def make_splits(frame_dirs, dataset: str) -> dict:
    """{split name: [frame_dir, ...]} for every split of the dataset, in the order of `frame_dirs`."""
    splits = {name: [] for name in split_names(dataset)}
    for frame_dir in frame_dirs:
        for protocol in DATASETS[dataset].protocols:
            splits[split_of(frame_dir, protocol, dataset)].append(frame_dir)
    return splits


def is_interaction(label: int) -> bool:
    """Whether a 0-based label is a two-person action."""
    return label + 1 in INTERACTION_ACTIONS


# ---------------------------------------------------------------------------------------------------------
# Motion programs

# Degrees of freedom of the stick body. Angles in radians, translations in metres, in the person's own
# frame (x to the person's left, y up, z forward). Arm elevation 0 hangs down, pi/2 points forward (azimuth
# 0) or outward (azimuth pi/2); crouch 1 is a deep sitting pose.
CHANNELS = ("root_x", "root_y", "root_z", "turn", "crouch", "lean", "bend", "twist", "head_pitch", "head_yaw",
            "l_arm_elev", "l_arm_azim", "l_elbow", "r_arm_elev", "r_arm_azim", "r_elbow",
            "l_hip", "l_knee", "r_hip", "r_knee")
CHANNEL_INDEX = {name: i for i, name in enumerate(CHANNELS)}
NEUTRAL = {"l_arm_elev": 0.12, "r_arm_elev": 0.12, "l_arm_azim": 0.4, "r_arm_azim": 0.4,
           "l_elbow": 0.2, "r_elbow": 0.2, "l_knee": 0.05, "r_knee": 0.05}
PARAMS = ("base", "amp", "cycles", "phase", "ramp", "ramp_start", "ramp_end", "pulse", "pulse_at",
          "pulse_width")
PARAM_INDEX = {name: i for i, name in enumerate(PARAMS)}  # column of each parameter in a compiled program


@dataclass(frozen=True)
class Channel:
    """One animated degree of freedom. Over the clip's progress u in [0, 1] its value is
    base + amp * sin(2 pi cycles u + phase) + ramp * smoothstep(u from ramp_start to ramp_end)
    + pulse * exp(-((u - pulse_at) / pulse_width)^2 / 2). `base=None` keeps the neutral value."""

    base: float | None = None
    amp: float = 0.0
    cycles: float = 0.0
    phase: float = 0.0
    ramp: float = 0.0
    ramp_start: float = 0.3
    ramp_end: float = 0.7
    pulse: float = 0.0
    pulse_at: float = 0.5
    pulse_width: float = 0.12


@dataclass(frozen=True)
class Action:
    people: tuple  # ({channel name: Channel}, ...): one person, or actor and receiver of an interaction
    distance: float = 1.0  # metres between the two people of an interaction


def _both_arms(**channels) -> dict:
    """The same Channels for both arms: _both_arms(elbow=c) -> {'l_elbow': c, 'r_elbow': c}."""
    return {f"{side}_{name}": channel for side in "lr" for name, channel in channels.items()}


# Hand-written programs of the demo actions (1-based NTU60 action numbers).
DEMO_ACTIONS = {
    8: ("sit down", Action(({
        "crouch": Channel(ramp=1.0, ramp_start=0.25, ramp_end=0.65),
        "lean": Channel(pulse=0.35, pulse_at=0.45, pulse_width=0.1),
        **_both_arms(elbow=Channel(ramp=0.9, ramp_start=0.3, ramp_end=0.6))},))),
    10: ("clapping", Action((_both_arms(
        arm_elev=Channel(base=1.25), elbow=Channel(base=0.9),
        arm_azim=Channel(base=0.15, amp=0.5, cycles=7.0)),))),
    23: ("hand waving", Action(({
        "r_arm_elev": Channel(base=2.5), "r_arm_azim": Channel(base=0.9, amp=0.25, cycles=5.0),
        "r_elbow": Channel(base=0.6, amp=0.45, cycles=5.0)},))),
    24: ("kicking something", Action(({
        "r_hip": Channel(pulse=1.3, pulse_at=0.5, pulse_width=0.07),
        "r_knee": Channel(base=0.05, pulse=1.1, pulse_at=0.43, pulse_width=0.06),
        "lean": Channel(pulse=-0.25, pulse_at=0.5, pulse_width=0.08),
        **_both_arms(arm_azim=Channel(base=0.4, pulse=0.6, pulse_at=0.5, pulse_width=0.1))},))),
    27: ("jump up", Action(({
        "root_y": Channel(pulse=0.35, pulse_at=0.55, pulse_width=0.05),
        "crouch": Channel(pulse=0.45, pulse_at=0.43, pulse_width=0.06),
        **_both_arms(arm_elev=Channel(pulse=2.2, pulse_at=0.55, pulse_width=0.07))},))),
    31: ("pointing to something with finger", Action(({
        "r_arm_elev": Channel(pulse=1.5, pulse_at=0.5, pulse_width=0.2),
        "r_arm_azim": Channel(base=0.2), "r_elbow": Channel(base=0.05),
        "head_yaw": Channel(pulse=-0.4, pulse_at=0.5, pulse_width=0.2)},))),
    35: ("nod head/bow", Action(({
        "lean": Channel(pulse=0.9, pulse_at=0.5, pulse_width=0.12),
        "head_pitch": Channel(pulse=0.35, pulse_at=0.5, pulse_width=0.12)},))),
    43: ("falling", Action(({
        "lean": Channel(ramp=1.2, ramp_start=0.3, ramp_end=0.7),
        "crouch": Channel(ramp=0.7, ramp_start=0.25, ramp_end=0.6),
        "root_y": Channel(ramp=-0.45, ramp_start=0.45, ramp_end=0.8),
        "root_z": Channel(ramp=0.5, ramp_start=0.4, ramp_end=0.8),
        **_both_arms(arm_elev=Channel(ramp=1.3, ramp_start=0.4, ramp_end=0.7))},))),
    52: ("pushing other person", Action((
        {"root_z": Channel(pulse=0.15, pulse_at=0.45, pulse_width=0.1),
         "lean": Channel(pulse=0.2, pulse_at=0.45, pulse_width=0.1),
         **_both_arms(arm_elev=Channel(pulse=1.4, pulse_at=0.45, pulse_width=0.1), arm_azim=Channel(base=0.1),
                      elbow=Channel(base=1.2, pulse=-1.0, pulse_at=0.48, pulse_width=0.08))},
        {"root_z": Channel(ramp=-0.5, ramp_start=0.45, ramp_end=0.7),
         "lean": Channel(pulse=-0.3, pulse_at=0.5, pulse_width=0.1),
         **_both_arms(arm_elev=Channel(pulse=0.7, pulse_at=0.55, pulse_width=0.1))}),
        distance=0.75)),
    58: ("handshaking", Action(tuple(
        {"r_arm_elev": Channel(pulse=0.8, pulse_at=0.5, pulse_width=0.25),
         "r_arm_azim": Channel(base=-0.45), "r_elbow": Channel(base=0.7, amp=0.15, cycles=5.0)}
        for _ in range(2)), distance=0.7)),
}

# Value range a drawn program may hold or move a channel to.
PROCEDURAL_RANGES = {
    "root_x": (-0.6, 0.6), "root_y": (-0.1, 0.3), "root_z": (-0.6, 0.6), "turn": (-1.6, 1.6),
    "crouch": (0.0, 0.9), "lean": (-0.2, 1.0), "bend": (-0.4, 0.4), "twist": (-0.6, 0.6),
    "head_pitch": (-0.4, 0.6), "head_yaw": (-0.9, 0.9),
    **{f"{side}_{name}": bounds for side in "lr" for name, bounds in
       (("arm_elev", (0.0, 2.8)), ("arm_azim", (-0.3, 1.5)), ("elbow", (0.0, 2.4)),
        ("hip", (-0.3, 1.4)), ("knee", (0.0, 1.8)))},
}
POSTURE_CHANNELS = tuple(name for name in PROCEDURAL_RANGES if not name.startswith(("root_", "turn")))
PROGRAM_SEED = 20_160_626  # fixed: drawn actions do not depend on the dataset seed


def _neutral(name: str) -> float:
    return NEUTRAL.get(name, 0.0)


def _uniform(rng, low: float, high: float) -> float:
    return float(rng.uniform(low, high))


def _mirrored(name: str) -> str:
    return {"l": "r", "r": "l"}[name[0]] + name[1:]


def draw_motion(rng, num_postures: int, num_moves: int, movable=tuple(PROCEDURAL_RANGES)) -> dict:
    """A random program: held values for `num_postures` channels and one wave, ramp or bump each for
    `num_moves` of the `movable` channels; a moving arm or leg channel is copied to the other side a third
    of the time."""
    motion = {}
    for name in map(str, rng.choice(POSTURE_CHANNELS, num_postures, replace=False)):
        low, high = PROCEDURAL_RANGES[name]
        motion[name] = Channel(base=_uniform(rng, low, high))
    for name in map(str, rng.choice(movable, num_moves, replace=False)):
        low, high = PROCEDURAL_RANGES[name]
        base = motion[name].base if name in motion else _neutral(name)
        towards_far_end = 1.0 if high - base > base - low else -1.0
        span = towards_far_end * _uniform(rng, 0.4, 1.0) * (high - low)
        kind = rng.integers(3)
        if kind == 0:
            channel = Channel(base=base + span / 2, amp=span / 2, cycles=_uniform(rng, 1.5, 6.0),
                              phase=_uniform(rng, 0.0, 2 * math.pi))
        elif kind == 1:
            start = _uniform(rng, 0.1, 0.5)
            end = start + _uniform(rng, 0.15, 0.4)
            channel = Channel(base=base, ramp=span, ramp_start=start, ramp_end=end)
        else:
            channel = Channel(base=base, pulse=span, pulse_at=_uniform(rng, 0.3, 0.7),
                              pulse_width=_uniform(rng, 0.06, 0.18))
        motion[name] = channel
        if name[:2] in ("l_", "r_") and rng.random() < 1 / 3:
            motion[_mirrored(name)] = channel
    return motion


def draw_action(action: int) -> Action:
    """The drawn program of a 1-based action number (the same for every call)."""
    rng = np.random.default_rng([PROGRAM_SEED, action])
    if action not in INTERACTION_ACTIONS:
        return Action((draw_motion(rng, num_postures=2, num_moves=int(rng.integers(1, 4))),))
    actor = draw_motion(rng, num_postures=1, num_moves=int(rng.integers(0, 2)))
    sides = ("l", "r") if rng.random() < 0.3 else (str(rng.choice(("l", "r"))),)
    for side in sides:  # reach towards the partner
        actor[f"{side}_arm_elev"] = Channel(pulse=_uniform(rng, 1.0, 1.7), pulse_at=_uniform(rng, 0.35, 0.6),
                                            pulse_width=_uniform(rng, 0.08, 0.25))
        actor[f"{side}_arm_azim"] = Channel(base=_uniform(rng, -0.4, 0.3))
        actor[f"{side}_elbow"] = Channel(base=_uniform(rng, 0.0, 1.2))
    distance = _uniform(rng, 0.7, 1.2)
    approach = _uniform(rng, 0.0, distance - 0.5)  # metres the actor steps towards the receiver
    actor["root_z"] = Channel(ramp=approach, ramp_start=_uniform(rng, 0.1, 0.4))
    receiver = draw_motion(rng, num_postures=1, num_moves=1, movable=POSTURE_CHANNELS)  # reacts in place
    return Action((actor, receiver), distance=distance)


def action_program(action: int) -> Action:
    """The motion program of a 1-based action number: hand-written for the demo actions, else drawn."""
    return DEMO_ACTIONS[action][1] if action in DEMO_ACTIONS else draw_action(action)


def compile_action(action: Action) -> np.ndarray:
    """The program as an array [people, channels, parameters] (columns named by PARAMS)."""
    table = np.zeros((len(action.people), len(CHANNELS), len(PARAMS)))
    for person, motion in enumerate(action.people):
        for c, name in enumerate(CHANNELS):
            channel = motion.get(name, Channel())
            values = {param: getattr(channel, param) for param in PARAMS}
            if channel.base is None:
                values["base"] = _neutral(name)
            table[person, c] = [values[param] for param in PARAMS]
    return table


# Per-channel standard deviation of the posture jitter: none for the translations.
BASE_JITTER = np.array([0.0 if name.startswith("root_") else 0.06 for name in CHANNELS])


def vary_program(program: np.ndarray, rng) -> np.ndarray:
    """A per-sample variant of a compiled program [people, channels, parameters]: posture jitter, amplitudes
    x0.75-1.25, one speed factor and phase shift for the sample, and shifted timing of ramps and bumps."""
    out = program.copy()
    shape = program.shape[:2]  # [people, channels]
    out[..., PARAM_INDEX["base"]] += rng.normal(0.0, 1.0, shape) * BASE_JITTER
    for param in ("amp", "ramp", "pulse"):
        out[..., PARAM_INDEX[param]] *= rng.uniform(0.75, 1.25, shape)
    out[..., PARAM_INDEX["cycles"]] *= rng.uniform(0.8, 1.25)
    out[..., PARAM_INDEX["phase"]] += rng.uniform(0.0, 2 * math.pi)
    shift = rng.normal(0.0, 0.04)
    for param in ("ramp_start", "ramp_end", "pulse_at"):
        out[..., PARAM_INDEX[param]] += shift + rng.normal(0.0, 0.015, shape)
    out[..., PARAM_INDEX["pulse_width"]] *= rng.uniform(0.8, 1.25)
    return out


def animate(program: np.ndarray, num_frames: int) -> np.ndarray:
    """Channel values [people, channels, T] of a compiled program over `num_frames` frames."""
    u = np.linspace(0.0, 1.0, num_frames)  # [T] progress through the clip
    p = {name: program[..., i, None] for name, i in PARAM_INDEX.items()}  # each [people, channels, 1]
    wave = p["amp"] * np.sin(2 * math.pi * p["cycles"] * u + p["phase"])
    ramp_duration = np.maximum(p["ramp_end"] - p["ramp_start"], 0.02)
    ramp_progress = np.clip((u - p["ramp_start"]) / ramp_duration, 0.0, 1.0)
    ramp = p["ramp"] * ramp_progress * ramp_progress * (3.0 - 2.0 * ramp_progress)  # smoothstep
    pulse = p["pulse"] * np.exp(-0.5 * ((u - p["pulse_at"]) / p["pulse_width"]) ** 2)
    return p["base"] + wave + ramp + pulse


# ---------------------------------------------------------------------------------------------------------
# The stick body

REFERENCE_HEIGHT = 1.7  # metres; segment lengths below are for a body this tall
HIP_HALF_WIDTH, THIGH, SHIN = 0.10, 0.45, 0.43
SPINE, SHOULDER_HALF_WIDTH, UPPER_ARM, FOREARM, NECK = 0.52, 0.19, 0.30, 0.27, 0.22


def _vec(x, y, z) -> np.ndarray:
    """Stack components (broadcastable arrays or scalars) into points [..., 3]."""
    out = np.empty(np.broadcast_shapes(np.shape(x), np.shape(y), np.shape(z)) + (3,))
    out[..., 0], out[..., 1], out[..., 2] = x, y, z
    return out


def rotate_y(points: np.ndarray, angle) -> np.ndarray:
    """Rotate points [..., 3] about the vertical axis by `angle` (broadcast against points[..., 0]);
    a positive angle turns +z (forward) towards +x."""
    x, z = points[..., 0], points[..., 2]
    cos, sin = np.cos(angle), np.sin(angle)
    return _vec(x * cos + z * sin, points[..., 1], z * cos - x * sin)


SIDES = np.array([[1.0], [-1.0]])  # [2, 1]: left joints lie towards +x, right joints towards -x


def _left_right(channels: np.ndarray, name: str) -> np.ndarray:
    """Values [people, 2, T] of the pair l_<name>, r_<name> from channel values [people, channels, T]."""
    return channels[:, [CHANNEL_INDEX[f"l_{name}"], CHANNEL_INDEX[f"r_{name}"]]]


def pose_bodies(channels: np.ndarray, heights: np.ndarray) -> np.ndarray:
    """COCO-17 joints [people, T, 17, 3] in metres of bodies posed by channel values [people, channels, T];
    each body stands at the origin of its own frame (x left, y up, z forward), feet on the ground.
    Paired joints are computed for both sides at once, on a side axis of length 2 (left, right)."""
    ch = dict(zip(CHANNELS, channels.transpose(1, 0, 2)[:, :, None]))  # name -> [people, 1, T]
    s = (heights / REFERENCE_HEIGHT)[:, None, None, None]  # [people, 1, 1, 1] body scale, for points

    crouch = ch["crouch"]
    hip_flex = _left_right(channels, "hip") + 1.4 * crouch  # [people, 2, T]
    shin_angle = hip_flex - (_left_right(channels, "knee") + 1.5 * crouch)
    leg_height = THIGH * np.cos(hip_flex) + SHIN * np.cos(shin_angle)  # hip above ankle, reference body
    pelvis_height = s[..., 0] * leg_height.max(axis=1, keepdims=True) + ch["root_y"]  # [people, 1, T]
    hips = _vec(SIDES * HIP_HALF_WIDTH * s[..., 0], pelvis_height, 0.0)  # [people, 2, T, 3]
    knees = hips + THIGH * s * _vec(0.0, -np.cos(hip_flex), np.sin(hip_flex))
    ankles = knees + SHIN * s * _vec(0.0, -np.cos(shin_angle), np.sin(shin_angle))

    lean = ch["lean"] + 0.25 * crouch  # [people, 1, T]
    bend, twist = ch["bend"], ch["twist"]
    spine = _vec(np.sin(bend) * np.cos(lean), np.cos(bend) * np.cos(lean), np.sin(lean))  # [people, 1, T, 3]
    neck = _vec(0.0, pelvis_height, 0.0) + SPINE * s * spine
    across = _vec(np.cos(twist), 0.0, -np.sin(twist))  # towards the left shoulder
    shoulders = neck + SHOULDER_HALF_WIDTH * s * SIDES[..., None] * across  # [people, 2, T, 3]

    # Arm direction: down at elevation 0, forward at (pi/2, azimuth 0), outward at (pi/2, pi/2); the elbow
    # bends it towards `bend_to`, its direction at elevation + pi/2. Both turn with the shoulders.
    elev, azim = _left_right(channels, "arm_elev"), _left_right(channels, "arm_azim")  # [people, 2, T]
    sin_elev, cos_elev, sin_azim, cos_azim = np.sin(elev), np.cos(elev), np.sin(azim), np.cos(azim)
    along = rotate_y(_vec(SIDES * sin_elev * sin_azim, -cos_elev, sin_elev * cos_azim), twist)
    bend_to = rotate_y(_vec(SIDES * cos_elev * sin_azim, sin_elev, cos_elev * cos_azim), twist)
    elbow_flex = _left_right(channels, "elbow")[..., None]  # [people, 2, T, 1]
    elbows = shoulders + UPPER_ARM * s * along
    wrists = elbows + FOREARM * s * (np.cos(elbow_flex) * along + np.sin(elbow_flex) * bend_to)

    tilt = lean + ch["head_pitch"]
    facing = twist + ch["head_yaw"]
    head_up = _vec(np.sin(bend) * np.cos(tilt), np.cos(bend) * np.cos(tilt), np.sin(tilt))
    head = neck + NECK * s * head_up
    face = _vec(np.sin(facing) * np.cos(tilt), -np.sin(tilt), np.cos(facing) * np.cos(tilt))
    sideways = SIDES[..., None] * _vec(np.cos(facing), 0.0, -np.sin(facing))  # [people, 2, T, 3] outwards
    nose = head + s * (0.10 * face - 0.02 * head_up)
    eyes = head + s * (0.085 * face + 0.03 * head_up + 0.035 * sideways)
    ears = head + s * (0.075 * sideways)

    parts = (nose, eyes, ears, shoulders, elbows, wrists, hips, knees, ankles)  # in COCO-17 order
    body = np.concatenate(parts, axis=1)  # [people, 17, T, 3]
    body = rotate_y(body.transpose(0, 2, 1, 3), ch["turn"].transpose(0, 2, 1))  # [people, T, 17, 3]
    body[..., 0] += ch["root_x"].transpose(0, 2, 1)
    body[..., 2] += ch["root_z"].transpose(0, 2, 1)
    return body


def place(body: np.ndarray, facing: float, x: float, z: float) -> np.ndarray:
    """Move a body [T, 17, 3] from its own frame into the room: turned by `facing`, standing at (x, z)."""
    return rotate_y(body, facing) + np.array([x, 0.0, z])


# ---------------------------------------------------------------------------------------------------------
# Camera

CAMERA_YAW = {1: 0.0, 2: -math.pi / 4, 3: math.pi / 4}  # camera 1 faces the performer
FOCAL_LENGTH = 1050.0  # pixels, about the Kinect v2 colour camera


@dataclass(frozen=True)
class Camera:
    yaw: float  # position around the room centre; 0 = on the +z axis, looking towards -z
    distance: float  # metres from the room centre
    height: float  # metres above the floor
    cx: float  # pixel column and row of the optical axis
    cy: float


def _golden_fraction(n: int) -> float:
    """A well-spread number in [0, 1) for an integer id."""
    return (n * 0.6180339887) % 1.0


def make_camera(setup: int, camera: int, rng) -> Camera:
    """The camera of a sample: angle from the camera id, distance and height from the setup id; jittered."""
    return Camera(yaw=CAMERA_YAW[camera] + rng.normal(0.0, 0.08),
                  distance=2.7 + 1.2 * _golden_fraction(setup) + rng.normal(0.0, 0.05),
                  height=0.7 + 0.6 * _golden_fraction(setup + 7) + rng.normal(0.0, 0.03),
                  cx=IMG_SHAPE[1] / 2 + rng.normal(0.0, 60.0), cy=IMG_SHAPE[0] / 2 + rng.normal(0.0, 30.0))


def project(points: np.ndarray, camera: Camera) -> np.ndarray:
    """Pixel coordinates [..., 2] (x right, y down) of room points [..., 3] seen by a pinhole camera."""
    sin, cos = math.sin(camera.yaw), math.cos(camera.yaw)
    dx = points[..., 0] - camera.distance * sin
    dz = points[..., 2] - camera.distance * cos
    right = dx * cos - dz * sin
    depth = np.maximum(-(dx * sin + dz * cos), 0.3)
    up = points[..., 1] - camera.height
    return np.stack([camera.cx + FOCAL_LENGTH * right / depth, camera.cy - FOCAL_LENGTH * up / depth], -1)


# ---------------------------------------------------------------------------------------------------------
# Detector effects

# Typical HRNet confidence per COCO joint: the face is found best, ankles and wrists worst.
BASE_SCORE = np.array([0.93, 0.92, 0.92, 0.86, 0.86, 0.88, 0.88, 0.8, 0.8, 0.74, 0.74, 0.84, 0.84, 0.78, 0.78,
                       0.72, 0.72])
OCCLUDABLE = ((7, 9), (8, 10), (9,), (10,), (13, 15), (14, 16), (15,), (16,), (1, 3), (2, 4))
P_MISSING_FRAMES = 0.12  # a person is lost for a stretch of frames
P_ONE_OF_TWO = 0.06  # an interaction where only one person was detected
P_BYSTANDER = 0.05  # an extra low-confidence detection


def random_segment(num_frames: int, max_length: int, rng) -> slice:
    length = int(rng.integers(1, max(max_length, 1) + 1))
    start = int(rng.integers(0, num_frames - length + 1))
    return slice(start, start + length)


def detect(keypoint: np.ndarray, rng) -> tuple:
    """Detector-like (keypoint [M, T, 17, 2], keypoint_score [M, T, 17]) from exact pixel positions:
    Gaussian noise, per-joint confidences, occluded limbs, clipping to the image and lost frames."""
    num_people, num_frames = keypoint.shape[:2]
    keypoint = keypoint + rng.normal(0.0, rng.uniform(1.0, 3.0), keypoint.shape)
    score = (BASE_SCORE + rng.normal(0.0, 0.04, (num_people, 1, NUM_JOINTS))
             + rng.normal(0.0, 0.03, (num_people, num_frames, NUM_JOINTS)))
    for _ in range(rng.poisson(0.8 * num_people)):
        person, joints = rng.integers(num_people), list(OCCLUDABLE[rng.integers(len(OCCLUDABLE))])
        frames = random_segment(num_frames, num_frames // 3, rng)
        score[person, frames, joints] *= rng.uniform(0.1, 0.4)
        keypoint[person, frames, joints] += rng.normal(0.0, 12.0, keypoint[person, frames, joints].shape)
    inside = np.clip(keypoint, 0.0, [IMG_SHAPE[1] - 1, IMG_SHAPE[0] - 1])
    score[(inside != keypoint).any(axis=-1)] *= 0.3  # joints outside the image are guessed at its border
    keypoint, score = inside, np.clip(score, 0.01, 1.0)
    if rng.random() < P_MISSING_FRAMES:
        person, frames = rng.integers(num_people), random_segment(num_frames, max(num_frames // 6, 1), rng)
        keypoint[person, frames] = 0.0
        score[person, frames] = 0.0
    return keypoint, score


def bystander(num_frames: int, camera: Camera, rng) -> tuple:
    """A spurious low-confidence detection: a still person far behind, seen only in part of the clip."""
    standing = animate(compile_action(Action(({},))), num_frames)  # [1, channels, T]
    body = pose_bodies(standing, np.array([rng.uniform(1.5, 1.9)]))[0]
    body = place(body, rng.uniform(-math.pi, math.pi), rng.uniform(-2.0, 2.0), rng.uniform(-4.0, -2.0))
    keypoint = project(body, camera) + rng.normal(0.0, 6.0, (num_frames, NUM_JOINTS, 2))
    keypoint = np.clip(keypoint, 0.0, [IMG_SHAPE[1] - 1, IMG_SHAPE[0] - 1])
    score = rng.uniform(0.05, 0.3, (num_frames, NUM_JOINTS))
    seen = np.zeros(num_frames, dtype=bool)
    seen[random_segment(num_frames, num_frames, rng)] = True
    return keypoint * seen[:, None, None], score * seen[:, None]


# ---------------------------------------------------------------------------------------------------------
# Samples and presets

@dataclass(frozen=True)
class Preset:
    dataset: str  # key of DATASETS: id ranges and splits
    actions: tuple  # 1-based NTU action numbers
    num_samples: int
    min_frames: int
    max_frames: int
    typical_frames: tuple  # (low, high) range of the per-action median length
    required: tuple = ()  # frame_dirs included besides the `num_samples` drawn ones


PRESETS = {
    "ntu60": Preset("ntu60", tuple(range(1, 61)), 56_880, 30, 300, (55, 110)),
    "ntu120": Preset("ntu120", tuple(range(1, 121)), 114_480, 30, 300, (55, 110)),
    "ntu120_oneshot": Preset("ntu120", tuple(range(1, 121)), 2_400, 30, 150, (40, 70), required=tuple(
        exemplar_name(action) for action in NOVEL_ACTIONS + HELD_OUT_ACTIONS)),
    "demo": Preset("ntu60", tuple(DEMO_ACTIONS), 900, 30, 100, (45, 65)),
}


def performer_height(performer: int) -> float:
    """Body height in metres of a performer id (1.5-1.9 m, fixed per performer)."""
    return 1.5 + 0.4 * _golden_fraction(performer + 11)


def render_sample(ids: dict, program: np.ndarray, distance: float, num_frames: int, rng) -> tuple:
    """(keypoint [M, T, 17, 2], keypoint_score [M, T, 17]) float32 of one sample, from its ids
    (see parse_frame_dir), its action's compiled program and the interaction distance."""
    channels = animate(vary_program(program, rng), num_frames)  # [people, channels, T]
    num_people = len(channels)
    heights = np.array([performer_height(ids["performer"])] + [rng.uniform(1.5, 1.9)] * (num_people - 1))
    bodies = pose_bodies(channels, heights * rng.uniform(0.98, 1.02, num_people))  # [people, T, 17, 3]
    x, z = rng.normal(0.0, 0.3, 2)
    if num_people == 1:
        room = place(bodies[0], rng.normal(0.0, 0.25), x, z)[None]
    else:  # the actor on the left of the pair axis facing right, the receiver facing the actor
        axis = rng.normal(0.0, 0.3)
        half = distance * rng.uniform(0.9, 1.1) / 2
        dx, dz = half * math.sin(axis + math.pi / 2), half * math.cos(axis + math.pi / 2)
        room = np.stack([place(bodies[0], axis + math.pi / 2, x - dx, z - dz),
                         place(bodies[1], axis - math.pi / 2, x + dx, z + dz)])
    camera = make_camera(ids["setup"], ids["camera"], rng)
    keypoint, score = detect(project(room, camera), rng)  # [M, T, 17, 2], [M, T, 17]
    if num_people == 2 and rng.random() < P_ONE_OF_TWO:
        keep = rng.integers(2)
        keypoint, score = keypoint[keep:keep + 1], score[keep:keep + 1]
    if rng.random() < P_BYSTANDER:
        extra_keypoint, extra_score = bystander(num_frames, camera, rng)
        keypoint = np.concatenate([keypoint, extra_keypoint[None]])
        score = np.concatenate([score, extra_score[None]])
    return keypoint.astype(np.float32), score.astype(np.float32)


def _per_action_counts(num_samples: int, num_actions: int) -> list:
    base, extra = divmod(num_samples, num_actions)
    return [base + (i < extra) for i in range(num_actions)]


def draw_sample_ids(preset: Preset, num_samples: int, rng) -> list:
    """Sorted unique (setup, camera, performer, replication, action) tuples: `num_samples` balanced over
    actions, plus the preset's required ones (kept once if also drawn). Each action's drawn samples are
    shared between the cross-subject training and validation performers in proportion to their numbers,
    so both halves hold every action; setups, cameras and replications are uniform."""
    spec = DATASETS[preset.dataset]
    train_performers = np.array(spec.xsub_train_performers)
    val_performers = np.setdiff1d(np.arange(1, spec.num_performers + 1), train_performers)
    train_fraction = len(train_performers) / spec.num_performers
    ids = []
    for action, count in zip(preset.actions, _per_action_counts(num_samples, len(preset.actions))):
        num_train = round(count * train_fraction)
        if count >= 2:
            num_train = min(max(num_train, 1), count - 1)
        for performers, n in ((train_performers, num_train), (val_performers, count - num_train)):
            grid = (spec.num_setups, NUM_CAMERAS, len(performers), NUM_REPLICATIONS)
            if n > math.prod(grid):
                raise ValueError(f"too many samples: {preset.dataset} has only {math.prod(grid)} ids per "
                                 "action and performer group")
            cells = rng.choice(math.prod(grid), size=n, replace=False)
            for setup, camera, performer, replication in zip(*np.unravel_index(cells, grid)):
                ids.append((int(setup) + 1, int(camera) + 1, int(performers[performer]), int(replication) + 1,
                            action))
    ids += [tuple(parse_frame_dir(frame_dir).values()) for frame_dir in preset.required]
    return sorted(set(ids))


def draw_length(preset: Preset, action: int, rng) -> int:
    """Number of frames: an action-specific median times a log-normal factor, clipped to the preset range."""
    low, high = preset.typical_frames
    median = low + (high - low) * _golden_fraction(action + 3)
    return int(np.clip(round(median * math.exp(rng.normal(0.0, 0.35))), preset.min_frames, preset.max_frames))


def generate(preset: str, seed: int = 0, num_samples: int | None = None, progress: bool = False) -> dict:
    """A synthetic PYSKL dataset dict ({'split': ..., 'annotations': [...]}) of a preset ('demo', 'ntu60',
    'ntu120', 'ntu120_oneshot'); `num_samples` overrides the preset's count of drawn samples (required ones
    come on top). The same (preset, seed, num_samples) always gives the same content."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    config = PRESETS[preset]
    num_samples = config.num_samples if num_samples is None else num_samples
    if num_samples < 1:
        raise ValueError(f"num_samples must be positive, got {num_samples}")
    rng = np.random.default_rng(seed)
    programs = {}
    for action in config.actions:
        program = action_program(action)
        programs[action] = (compile_action(program), program.distance)
    annotations = []
    for setup, camera, performer, replication, action in tqdm(
            draw_sample_ids(config, num_samples, rng), desc=f"synthetic {preset}", unit="sample",
            disable=not progress, mininterval=0.5):
        ids = dict(setup=setup, camera=camera, performer=performer, replication=replication, action=action)
        keypoint, score = render_sample(ids, *programs[action], draw_length(config, action, rng), rng)
        annotations.append({
            "frame_dir": make_frame_dir(setup, camera, performer, replication, action),
            "label": action - 1, "img_shape": IMG_SHAPE, "original_shape": IMG_SHAPE,
            "total_frames": keypoint.shape[1], "keypoint": keypoint, "keypoint_score": score})
    split = make_splits([ann["frame_dir"] for ann in annotations], config.dataset)
    return {"split": split, "annotations": annotations}


def write_pickle(data: dict, path) -> None:
    """Write `data` as a pickle (protocol 4) atomically: into a temporary file beside `path`, then renamed."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            pickle.dump(data, f, protocol=4)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def main(argv=None) -> None:
    from lib.data import synthetic_formats  # it builds on this module

    parser = argparse.ArgumentParser(prog="python -m lib.data.synthetic", description=__doc__.split("\n")[0])
    parser.add_argument("--preset", required=True, choices=tuple(PRESETS) + tuple(synthetic_formats.PRESETS),
                        help="an NTU preset, or the format of another PYSKL file (lib/data/synthetic_formats.py)")
    parser.add_argument("--out", required=True, type=Path, help="pickle to write (its folder is created)")
    parser.add_argument("--seed", type=int, default=0, help="random seed, >= 0 (default 0)")
    parser.add_argument("--num-samples", type=int, default=None,
                        help="override the preset's count of drawn samples")
    args = parser.parse_args(argv)
    if args.seed < 0:
        parser.error("--seed must be >= 0")
    if args.num_samples is not None and args.num_samples < 1:
        parser.error("--num-samples must be >= 1")
    if args.out.is_dir():
        parser.error(f"--out {args.out} is a folder; give the path of the pickle to write")

    start = time.perf_counter()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    try:
        if args.preset in synthetic_formats.PRESETS:
            data = synthetic_formats.write(args.preset, args.out, args.seed, args.num_samples)
        else:
            data = generate(args.preset, args.seed, args.num_samples, progress=True)
            write_pickle(data, args.out)
    except ValueError as e:
        parser.error(str(e))
    num_classes = len({ann["label"] for ann in data["annotations"]})
    print(f"wrote {args.out}: {len(data['annotations'])} samples, {num_classes} classes, "
          f"{args.out.stat().st_size / 2**20:.1f} MiB, {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main(sys.argv[1:])
