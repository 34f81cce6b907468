"""What masked motion pretraining reconstructs (pretrain_action.py at the end of a run, vis_reconstruction.py
on request): for a few validation clips, one row each of three filmstrips of the same frames of person 0:

    input           what the encoder sees: the visible joints (hidden ones are absent)
    reconstruction  the visible joints plus the hidden ones at their predicted positions, each with an
                    arrow: its predicted move over the next `segment` frames
    truth           the whole skeleton, with the true moves of the hidden joints

The model predicts positions and moves normalised per sequence over the hidden joints (see
lib/model/masked_motion.py); the picture puts them back in clip coordinates with the truth's mean and
root mean square over those joints. The mask is drawn as in training (motion-aware) from a fixed seed, so
the same checkpoint always gives the same picture.
"""
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lib import skeleton
from lib.config import Config
from lib.data.dataset import ActionDataset, open_store
from lib.engine.checkpoint import read_state_dict
from lib.engine.pretraining import MaskedMotionTask
from lib.errors import UserError
from lib.model.masked_motion import joint_motion, motion_aware_mask, normalisation, pretraining_loss
from lib.vis.attention import new_figure, select_samples

log = logging.getLogger(__name__)

KEYFRAMES = 4  # frames shown per filmstrip
ROW_PX = (1500, 300)  # one clip: three filmstrips side by side
TITLE_PX = 40
COLUMNS = ("input (hidden joints removed)", "reconstruction (hidden joints predicted)", "truth")
VISIBLE, HIDDEN_TRUE, HIDDEN_PREDICTED = "0.15", "tab:green", "tab:orange"


@dataclass
class Reconstruction:
    """Person 0 of one clip; positions and moves in clip coordinates."""
    frame_dir: str
    pose: np.ndarray  # [T, V, 2] the true positions
    present: np.ndarray  # [T, V] bool
    hidden: np.ndarray  # [T, V] bool
    predicted_pose: np.ndarray  # [T, V, 2]
    predicted_move: np.ndarray  # [T, V, 2]
    true_move: np.ndarray  # [T, V, 2]
    move_valid: np.ndarray  # [T, V] bool
    loss: float  # the training objective on this clip (position + motion)


@torch.no_grad()
def reconstruct(model, clip: np.ndarray, cfg: Config, frame_dir: str, seed: int = 0) -> Reconstruction:
    """Hide tokens of clip [M, T, V, 3] as in training (from `seed`), predict, and undo the normalisation."""
    p = cfg.pretrain
    x = torch.from_numpy(clip)[None]  # [1, M, T, V, 3]
    sequences = x.flatten(0, 1)  # [M, T, V, 3]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mask = motion_aware_mask(sequences, p.mask_ratio, p.segment, p.tau)
    predicted = model(x, mask).float()  # [M, T, V, 4]
    loss, _ = pretraining_loss(predicted[:1], sequences[:1], mask[:1], p.segment)
    pose, present = sequences[:1, ..., :2], sequences[:1, ..., 2] > 0  # [1, T, V, 2], [1, T, V]
    move, move_valid = joint_motion(sequences[:1], p.segment)
    mean, position_scale = normalisation(pose, (present & mask[:1])[..., None].expand_as(pose).float(), centre=True)
    _, move_scale = normalisation(move, (move_valid & mask[:1])[..., None].expand_as(move).float(), centre=False)
    return Reconstruction(frame_dir, pose[0].numpy(), present[0].numpy(), mask[0].numpy(),
                          (predicted[0, ..., :2] * position_scale[0] + mean[0]).numpy(),
                          (predicted[0, ..., 2:] * move_scale[0]).numpy(), move[0].numpy(), move_valid[0].numpy(),
                          float(loss))


def keyframes(r: Reconstruction, count: int = KEYFRAMES) -> list[int]:
    """`count` frames evenly spread over those where person 0 is present."""
    frames = np.flatnonzero(r.present.any(axis=1))
    if len(frames) == 0:
        return []
    return sorted({int(frames[i]) for i in np.linspace(0, len(frames) - 1, count).round().astype(int)})


def draw_filmstrip(ax, r: Reconstruction, frames: list[int], column: int):
    """Skeletons of `frames` side by side, shifted apart along x; y points down as in the image."""
    present = r.present
    if not present.any():
        return
    points = r.pose[present]  # [P, 2]
    width = max(float(np.ptp(points[:, 0])), 1e-3)
    low, high = points.min(axis=0), points.max(axis=0)
    margin = 0.15 * width
    spacing = 1.4 * width
    # the same limits in all three filmstrips of a clip, so that they line up
    ax.set_xlim(low[0] - margin, high[0] + (len(frames) - 1) * spacing + margin)
    ax.set_ylim(high[1] + margin + 0.1 * width, low[1] - margin)  # y down
    for k, t in enumerate(frames):
        shift = np.array([k * spacing, 0.0])
        pose, shown = r.pose[t] + shift, present[t].copy()
        if column == 0:
            shown &= ~r.hidden[t]
        if column == 1:
            pose = np.where(r.hidden[t][:, None], r.predicted_pose[t] + shift, pose)
        for child, parent in skeleton.H36M_BONES:
            if shown[child] and shown[parent]:
                ax.plot(pose[[child, parent], 0], pose[[child, parent], 1], color="0.6", lw=1.5, zorder=1)
        visible = shown & ~r.hidden[t]
        ax.scatter(pose[visible, 0], pose[visible, 1], s=12, color=VISIBLE, zorder=2)
        if column == 0:
            continue
        hidden = shown & r.hidden[t]
        colour = HIDDEN_PREDICTED if column == 1 else HIDDEN_TRUE
        ax.scatter(pose[hidden, 0], pose[hidden, 1], s=22, color=colour, edgecolors="black", linewidths=0.4,
                   zorder=3)
        moves = (r.predicted_move if column == 1 else r.true_move)[t]
        arrows = hidden & r.move_valid[t]
        ax.quiver(pose[arrows, 0], pose[arrows, 1], moves[arrows, 0], moves[arrows, 1], color=colour,
                  angles="xy", scale_units="xy", scale=1.0, width=0.004, zorder=4)
    for k, t in enumerate(frames):
        ax.text(k * spacing + r.pose[t][present[t], 0].mean(), high[1] + margin, f"frame {t}", ha="center",
                va="bottom", fontsize=7, color="0.4")
    ax.set_aspect("equal", adjustable="box")
    ax.set_xticks([])
    ax.set_yticks([])


def save_picture(rows: list[Reconstruction], path: Path, title: str):
    size = (ROW_PX[0], ROW_PX[1] * len(rows) + TITLE_PX)
    fig = new_figure(size)
    for i, r in enumerate(rows):
        frames = keyframes(r)
        bottom = 1 - (TITLE_PX + (i + 1) * ROW_PX[1]) / size[1]
        hidden_share = 100 * r.hidden[r.present].mean() if r.present.any() else 0.0
        titles = (f"{r.frame_dir}: {COLUMNS[0]}, {hidden_share:.0f}% hidden", f"{COLUMNS[1]}, loss {r.loss:.3f}",
                  COLUMNS[2])
        for column, title in enumerate(titles):
            ax = fig.add_axes((column / 3 + 0.005, bottom + 0.02 * ROW_PX[1] / size[1], 1 / 3 - 0.01,
                               0.86 * ROW_PX[1] / size[1]))
            draw_filmstrip(ax, r, frames, column)
            ax.set_title(title, fontsize=9)
    fig.text(0.5, 1 - 8 / size[1], title, ha="center", va="top", fontsize=11)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def draw_reconstructions(cfg: Config, checkpoint, path, samples=None, clips: int = 3, seed: int = 0) -> Path:
    """The picture of `checkpoint` (a pretraining checkpoint) on validation clips of the config's protocol:
    `samples` (indices or frame_dir names), by default the first `clips`. Runs on the CPU."""
    model = MaskedMotionTask(cfg).build_model(torch.device("cpu"), pretrained=False)
    state_dict, _ = read_state_dict(checkpoint)
    expected = model.state_dict()
    if set(state_dict) != set(expected) or any(state_dict[k].shape != v.shape for k, v in expected.items()):
        raise UserError(f"{checkpoint} is not a pretraining checkpoint of this config: give a checkpoint of "
                        "pretrain_action.py (e.g. RUN/latest_epoch.bin) and the config it was trained with")
    model.load_state_dict(state_dict)
    model.eval()
    dataset = ActionDataset(open_store(cfg.data), cfg.data, train=False)
    indices = select_samples(dataset, samples) if samples else list(range(min(clips, len(dataset))))
    rows = [reconstruct(model, dataset.clip(i), cfg, str(dataset.frame_dirs[i]), seed) for i in indices]
    path = Path(path)
    p = cfg.pretrain
    save_picture(rows, path, f"masked motion prediction: {Path(checkpoint).name}, {dataset.split}, "
                             f"{100 * p.mask_ratio:.0f}% of the tokens hidden, {p.segment} frames a token")
    log.info(f"reconstructions of {len(rows)} validation clips: {path}")
    return path
