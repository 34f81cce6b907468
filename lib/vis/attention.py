"""Attention heat-maps of a trained action model on validation samples (vis_action_attn.py).

For each chosen sample: one eval-mode forward with the attention probabilities returned, then PNGs of
every layer's joint-to-joint, joint-to-hyperedge (version 2) and temporal attention, of the skeleton
coloured by the attention each joint receives, of the hyperedge membership (version 2), a contact
sheet of all of them, and optionally the raw maps (attention.npz). Layers, heads, frames and persons
are numbered from 0. Shapes: L layers, h heads, T frames (data.clip_len), V = 17 joints, K classes.
"""
import logging
import textwrap
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from lib import skeleton
from lib.config import Config
from lib.data.dataset import ActionDataset
from lib.engine.build import load_trained, with_checkpoint_model
from lib.engine.runtime import keep_freed_memory, pick_device, setup_logging
from lib.errors import UserError
from lib.model.hypergraph import incidence_matrix

log = logging.getLogger(__name__)

NUM_PERSONS = 2  # person slots of a clip
DPI = 100
# Image sizes in pixels (width, height), fixed so that tests can check them.
MAP_PX = (640, 560)  # joint, hyperedge and temporal maps
SKELETON_PX = (520, 560)
MEMBERSHIP_PX = (440, 560)
# One panel of the contact sheet: as large as a single map, with the same fonts, so that the tick labels
# (17 joint names) stay readable at the published depth of 6 layers.
SHEET_CELL_PX = MAP_PX
SHEET_TITLE_PX = 80  # the band for the sheet's two-line title
CMAP = "Reds"


@dataclass
class VisOptions:
    samples: Optional[list] = None  # validation indices and/or frame_dir names; None: the first sample
    per_class: Optional[int] = None  # the first K validation samples of every class present
    attn_dir: str = "vis_data"
    save_raw: bool = False  # also write attention.npz
    head: Optional[int] = None  # None: mean over heads
    frame: Optional[int] = None  # None: mean over frames (spatial maps)
    person: int = 0


# ---------------------------------------------------------------------------------------------------------
# Choices


def check_options(opts: VisOptions, cfg: Config):
    """Errors that need only the flags and the config."""
    if cfg.model.model_version == "embed":
        raise UserError("the heatmap sheets show a classification model's prediction; an embedding model "
                        "(model_version: embed) has none: use a classification checkpoint and config")
    if opts.person not in range(NUM_PERSONS):
        raise UserError(f"--person must be 0 or 1 (the two person slots of a clip), got {opts.person}")
    if opts.per_class is not None and opts.samples:
        raise UserError("--per-class and --samples cannot be combined: give one of them")
    if opts.per_class is not None and opts.per_class < 1:
        raise UserError(f"--per-class must be at least 1, got {opts.per_class}")
    heads, frames = cfg.model.num_heads, cfg.data.clip_len
    if opts.head is not None and opts.head not in range(heads):
        raise UserError(f"--head must be in 0..{heads - 1} (model.num_heads is {heads}), got {opts.head}")
    if opts.frame is not None and opts.frame not in range(frames):
        raise UserError(f"--frame must be in 0..{frames - 1} (data.clip_len is {frames}), got {opts.frame}")


def select_samples(dataset: ActionDataset, samples=None, per_class=None) -> list[int]:
    """Validation indices, in the order asked for and without repeats: `samples` are indices or
    frame_dir names; `per_class` K takes the first K samples of every class present (by label)."""
    count = len(dataset)
    if per_class is not None:
        labels = dataset.labels
        return [int(i) for c in np.unique(labels) for i in np.flatnonzero(labels == c)[:per_class]]
    if not samples:
        return [0]
    by_name = {str(name): i for i, name in enumerate(dataset.frame_dirs)}
    chosen = []
    for item in samples:
        text = str(item).strip()
        if text.lstrip("-").isdigit():
            index = int(text)
            if not 0 <= index < count:
                raise UserError(f"sample index {index} is outside 0..{count - 1} "
                                f"({dataset.split} has {count} samples)")
        elif text in by_name:
            index = by_name[text]
        else:
            raise UserError(f"sample '{text}' is not in {dataset.split}: give an index 0..{count - 1} "
                            f"or a frame_dir of that split (e.g. {dataset.frame_dirs[0]})")
        if index not in chosen:
            chosen.append(index)
    return chosen


# ---------------------------------------------------------------------------------------------------------
# Maps


@torch.no_grad()
def forward_sample(model, clip: np.ndarray, device) -> tuple[np.ndarray, list[dict]]:
    """clip [M, T, V, 3] -> (softmax probabilities [K], the model's attention maps of this one sample)."""
    logits, maps = model(torch.from_numpy(clip)[None].to(device), return_attention=True)  # [1, K]
    return logits[0].float().softmax(-1).cpu().numpy(), maps


def person_maps(maps: list[dict], person: int, frames: int) -> dict[str, np.ndarray]:
    """The raw maps of one person of a one-sample forward (leading dims person-major), stacked over
    layers: 'joint' and 'hyperedge' (version 2 only) [L, h, T, V, V], 'temporal' [L, h, V, T, T]."""
    joints = skeleton.NUM_JOINTS

    def spatial(t):  # [M*T, h, V, V] -> [h, T, V, V]
        return t[person * frames:(person + 1) * frames].transpose(0, 1)

    def temporal(t):  # [M*V, h, T, T] -> [h, V, T, T]
        return t[person * joints:(person + 1) * joints].transpose(0, 1)

    out = {"joint": torch.stack([spatial(m["joint"]) for m in maps]),
           "temporal": torch.stack([temporal(m["temporal"]) for m in maps])}
    if maps[0]["hyperedge"] is not None:
        out["hyperedge"] = torch.stack([spatial(m["hyperedge"]) for m in maps])
    return {k: v.float().cpu().numpy() for k, v in out.items()}


def reduce_spatial(stack: np.ndarray, head=None, frame=None) -> np.ndarray:
    """[L, h, T, V, V] -> [L, V, V]: the chosen head / frame, or the mean over heads / frames."""
    heads = slice(None) if head is None else slice(head, head + 1)
    frames = slice(None) if frame is None else slice(frame, frame + 1)
    return stack[:, heads, frames].mean(axis=(1, 2))


def reduce_temporal(stack: np.ndarray, head=None) -> np.ndarray:
    """[L, h, V, T, T] -> [L, T, T]: the chosen head or the mean over heads, always the mean over joints."""
    heads = slice(None) if head is None else slice(head, head + 1)
    return stack[:, heads].mean(axis=(1, 2))


def received_attention(joint_map: np.ndarray) -> np.ndarray:
    """[V, V] (query rows, key columns) -> [V]: the mean over queries of each key's column (sums to 1)."""
    return joint_map.mean(axis=0)


def skeleton_pose(clip: np.ndarray, person: int, frame=None) -> np.ndarray:
    """clip [M, T, V, 3] -> [V, 2]: the pose at `frame`, or the mean pose of the clip (frames weighted by
    the joint's confidence, so that frames where a joint is missing do not pull it to the origin)."""
    xy, conf = clip[person, ..., :2], clip[person, ..., 2]  # [T, V, 2], [T, V]
    if frame is not None:
        return xy[frame]
    weight = conf.sum(axis=0)  # [V]
    weighted = (xy * conf[..., None]).sum(axis=0) / np.maximum(weight, 1e-8)[:, None]
    return np.where(weight[:, None] > 0, weighted, xy.mean(axis=0))


def describe(opts: VisOptions, heads: int, frames: int, over_frames: bool) -> str:
    """What a figure shows, e.g. 'person 0; head 1, mean over 8 frames'. Spatial maps are averaged over
    heads and frames (or one of each is chosen), temporal maps over heads (or one) and always joints."""
    chosen, averaged = [], []

    def pick(choice, count: int, unit: str):
        if choice is None:
            averaged.append(f"{count} {unit}s")
        else:
            chosen.append(f"{unit} {choice}")

    pick(opts.head, heads, "head")
    if over_frames:
        pick(opts.frame, frames, "frame")
    else:
        averaged.append(f"{skeleton.NUM_JOINTS} joints")
    parts = chosen + ([f"mean over {' and '.join(averaged)}"] if averaged else [])
    return f"person {opts.person}; " + ", ".join(parts)


# ---------------------------------------------------------------------------------------------------------
# Drawing: every panel draws into an (axes, colorbar axes) pair placed with fixed pixel margins inside a
# cell, so the single PNGs (one cell) and the sheet (a grid of cells) share the same code. Fixed
# margins instead of a layout engine: sizes are exact, and no layout pass runs per figure.
# Figures are made with the Agg canvas directly, not through pyplot: nothing is registered globally,
# so a figure is freed as soon as it is saved and dropped (no plt.close to forget, no backend switch).


@dataclass(frozen=True)
class Margins:
    """Pixels around the axes of a cell; `right` holds the colorbar (`gap` + `bar`) and its labels."""
    font: int
    left: int
    bottom: int
    right: int
    top: int
    bar: int
    gap: int


SINGLE = Margins(font=9, left=118, bottom=122, right=92, top=80, bar=14, gap=10)


def cell_axes(fig, cell, m: Margins):
    """cell (x, y, width, height) in pixels from the bottom left of `fig` -> (axes, colorbar axes)."""
    fig_w, fig_h = fig.get_size_inches() * DPI
    x, y, w, h = cell
    ax_w, ax_h = w - m.left - m.right, h - m.bottom - m.top
    ax = fig.add_axes(((x + m.left) / fig_w, (y + m.bottom) / fig_h, ax_w / fig_w, ax_h / fig_h))
    cax = fig.add_axes(((x + m.left + ax_w + m.gap) / fig_w, (y + m.bottom) / fig_h, m.bar / fig_w, ax_h / fig_h))
    return ax, cax


def add_colorbar(ax, cax, mappable, label, font: int):
    if label is None:
        cax.set_axis_off()
        return
    bar = ax.figure.colorbar(mappable, cax=cax)
    bar.set_label(label, fontsize=font - 1)
    bar.ax.tick_params(labelsize=font - 2)


def draw_heatmap(ax, cax, font: int, matrix, title: str, xlabel: str, ylabel: str, xticklabels=None,
                 yticklabels=None, cbar_label="attention", cmap: str = CMAP, **imshow):
    """matrix [R, C] as an image, row 0 at the top, with labelled axes and a colorbar (none when
    cbar_label is None). Tick labels: one per row / column when given, else a few integer ticks."""
    image = ax.imshow(matrix, cmap=cmap, interpolation="nearest", aspect="auto", **imshow)
    for axis, labels, rotation in ((ax.xaxis, xticklabels, 90), (ax.yaxis, yticklabels, 0)):
        if labels is None:
            axis.set_major_locator(MaxNLocator(nbins=6, integer=True))
        else:
            axis.set_ticks(range(len(labels)), labels, rotation=rotation)
    ax.tick_params(labelsize=font - 2, length=2)
    ax.set_xlabel(xlabel, fontsize=font - 1)
    ax.set_ylabel(ylabel, fontsize=font - 1)
    ax.set_title(title, fontsize=font)
    add_colorbar(ax, cax, image, cbar_label, font)


def draw_skeleton(ax, cax, font: int, pose, received, title: str):
    """pose [V, 2] in image coordinates (y down), joints coloured and sized by `received` [V]."""
    for child, parent in skeleton.H36M_BONES:
        shade = "0.3" if child in skeleton.H36M_LEFT else "0.7"  # left limbs darker
        ax.plot(pose[[child, parent], 0], pose[[child, parent], 1], color=shade, lw=2, zorder=1)
    span = np.ptp(received) or 1.0
    sizes = (25 + 200 * (received - received.min()) / span) * (font / SINGLE.font) ** 2  # [V]
    points = ax.scatter(pose[:, 0], pose[:, 1], c=received, s=sizes, cmap=CMAP, edgecolors="black",
                        linewidths=0.6, zorder=2)
    if font >= SINGLE.font:  # joint names only where there is room
        for name, (x, y) in zip(skeleton.H36M_JOINT_NAMES, pose):
            ax.annotate(name, (x, y), xytext=(5, 2), textcoords="offset points", fontsize=font - 3, color="0.3")
    ax.set_aspect("equal", adjustable="datalim")
    ax.invert_yaxis()
    ax.tick_params(labelsize=font - 2, length=2)
    ax.set_title(title, fontsize=font)
    add_colorbar(ax, cax, points, "attention received", font)


@dataclass
class Panel:
    """One figure of a sample: a PNG of its own and a cell of the contact sheet."""
    name: str  # file stem, e.g. 'joint_layer0'
    size_px: tuple  # (width, height) of its PNG
    column: int  # sheet cell: column, first row, number of rows
    row: int
    row_span: int
    draw: Callable  # draw(ax, cax, font)


def new_figure(size_px) -> Figure:
    fig = Figure(figsize=(size_px[0] / DPI, size_px[1] / DPI), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def sheet_columns(with_hyperedges: bool) -> list[str]:
    if with_hyperedges:
        return ["joint", "hyperedge", "temporal", "skeleton", "membership"]
    return ["joint", "temporal", "skeleton"]


def sheet_size_px(num_layers: int, with_hyperedges: bool) -> tuple:
    """One column per kind of panel (sheet_columns), one row per layer, plus the title band."""
    return (len(sheet_columns(with_hyperedges)) * SHEET_CELL_PX[0],
            num_layers * SHEET_CELL_PX[1] + SHEET_TITLE_PX)


def save_panel(panel: Panel, path: Path):
    fig = new_figure(panel.size_px)
    panel.draw(*cell_axes(fig, (0, 0, *panel.size_px), SINGLE), SINGLE.font)
    fig.savefig(path, dpi=DPI)


def save_sheet(panels: list[Panel], size_px: tuple, title: str, path: Path):
    """All panels in one figure, each in its cell of SHEET_CELL_PX (rows counted from the top); the
    membership takes the top two cells of the last column."""
    cell_w, cell_h = SHEET_CELL_PX
    grid_h = size_px[1] - SHEET_TITLE_PX
    fig = new_figure(size_px)
    for panel in panels:
        cell = (panel.column * cell_w, grid_h - (panel.row + panel.row_span) * cell_h, cell_w, panel.row_span * cell_h)
        panel.draw(*cell_axes(fig, cell, SINGLE), SINGLE.font)
    text = fig.text(0.5, 1 - 10 / size_px[1], title, ha="center", va="top", fontsize=SINGLE.font + 2)
    fit_text(text, size_px[0] - 20, SHEET_TITLE_PX - 14)
    fig.savefig(path, dpi=DPI)


def fit_text(text, width: float, height: float, min_font: int = 6):
    """Make a text artist fit `width` x `height` pixels without losing a character: a smaller font
    (down to `min_font`) first, then its lines wrapped at spaces (or inside over-long words). Long class
    names in a sheet's title are never clipped at the image edge this way."""
    renderer = text.figure.canvas.get_renderer()

    def extent():
        box = text.get_window_extent(renderer)
        return box.width, box.height

    while text.get_fontsize() > min_font and (extent()[0] > width or extent()[1] > height):
        text.set_fontsize(text.get_fontsize() - 1)
    lines = text.get_text().split("\n")
    chars = max(len(line) for line in lines)
    while extent()[0] > width and chars > 10:
        chars = min(chars - 1, int(chars * width / extent()[0]))
        text.set_text("\n".join(textwrap.fill(line, max(chars, 10)) for line in lines))


def sample_panels(cfg: Config, opts: VisOptions, raw: dict, clip: np.ndarray) -> list[Panel]:
    """The figures of one sample from its raw maps (see person_maps) and clip [M, T, V, 3]."""
    names = list(skeleton.H36M_JOINT_NAMES)
    num_layers, heads, frames = raw["joint"].shape[:3]
    with_hyperedges = "hyperedge" in raw
    column = {kind: k for k, kind in enumerate(sheet_columns(with_hyperedges))}
    spatial_text = describe(opts, heads, frames, over_frames=True)
    temporal_text = describe(opts, heads, frames, over_frames=False)
    joint = reduce_spatial(raw["joint"], opts.head, opts.frame)  # [L, V, V]
    temporal = reduce_temporal(raw["temporal"], opts.head)  # [L, T, T]
    pose = skeleton_pose(clip, opts.person, opts.frame)  # [V, 2]
    pose_text = f"pose of frame {opts.frame}" if opts.frame is not None else "mean pose"
    labels = list(cfg.hyper.joint_label[0])  # hyperedge of each joint
    j2e_note = "keys: the hyperedge feature seen by each joint"
    if with_hyperedges:
        hyperedge = reduce_spatial(raw["hyperedge"], opts.head, opts.frame)  # [L, V, V]
    if cfg.model.j2e_layout == "reference":  # queries and keys are mixed tokens, not joints
        j2e_rows = j2e_cols = [f"token {k}" for k in range(skeleton.NUM_JOINTS)]
        j2e_note += "\ntokens scrambled as published (j2e_layout: reference)"
    else:
        j2e_rows, j2e_cols = names, [f"e{label}: {name}" for label, name in zip(labels, names)]

    panels = []
    for i in range(num_layers):
        panels.append(Panel(f"joint_layer{i}", MAP_PX, column["joint"], i, 1, partial(
            draw_heatmap, matrix=joint[i], title=f"layer {i}: joint-to-joint attention\n{spatial_text}",
            xlabel="key joint", ylabel="query joint", xticklabels=names, yticklabels=names)))
        if with_hyperedges:
            panels.append(Panel(f"hyperedge_layer{i}", MAP_PX, column["hyperedge"], i, 1, partial(
                draw_heatmap, matrix=hyperedge[i], title=f"layer {i}: joint-to-hyperedge attention\n{spatial_text}\n"
                f"{j2e_note}", xlabel="key (hyperedge feature)", ylabel="query joint", xticklabels=j2e_cols,
                yticklabels=j2e_rows)))
        panels.append(Panel(f"temporal_layer{i}", MAP_PX, column["temporal"], i, 1, partial(
            draw_heatmap, matrix=temporal[i], title=f"layer {i}: temporal attention\n{temporal_text}",
            xlabel="key frame", ylabel="query frame")))
        panels.append(Panel(f"skeleton_layer{i}", SKELETON_PX, column["skeleton"], i, 1, partial(
            draw_skeleton, pose=pose, received=received_attention(joint[i]),
            title=f"layer {i}: attention each joint receives\n{spatial_text}\n{pose_text}")))
    if with_hyperedges:
        incidence = incidence_matrix(labels).numpy()  # [V, E]
        panels.append(Panel("hyperedges", MEMBERSHIP_PX, column["membership"], 0, min(num_layers, 2), partial(
            draw_heatmap, matrix=incidence, title=f"hyperedge membership ({incidence.shape[1]} hyperedges)",
            xlabel="hyperedge", ylabel="joint", xticklabels=[f"e{e}" for e in range(incidence.shape[1])],
            yticklabels=names, cbar_label=None, cmap="Greys", vmin=0, vmax=1)))
    return panels


# ---------------------------------------------------------------------------------------------------------
# The command


def visualise_attention(cfg: Config, checkpoint, opts: VisOptions) -> list[Path]:
    """Render the attention of `checkpoint` on the chosen validation samples of the config into
    {attn_dir}/{index:05d}_{frame_dir}/; print one line per sample; return the folders."""
    setup_logging()
    cfg = with_checkpoint_model(cfg, checkpoint)
    check_options(opts, cfg)
    keep_freed_memory()
    device = pick_device(cfg.train.device)
    trained = load_trained(cfg, checkpoint, device, single_clip=True)  # maps of the evenly spaced test clip
    model, dataset, names = trained.model, trained.val_set, trained.class_names
    indices = select_samples(dataset, opts.samples, opts.per_class)
    folders = []
    for index in indices:
        clip, label = dataset[index]  # float32 [M, T, V, 3], int
        frame_dir = str(dataset.frame_dirs[index])
        if not clip[opts.person, ..., 2].any():
            log.warning(f"warning: {frame_dir} has no person {opts.person}: "
                        "its maps are those of an empty (all-zero) input")
        probabilities, maps = forward_sample(model, clip, device)  # [K]
        raw = person_maps(maps, opts.person, clip.shape[1])
        predicted = int(probabilities.argmax())
        folder = Path(opts.attn_dir) / f"{index:05d}_{frame_dir}"
        folder.mkdir(parents=True, exist_ok=True)
        panels = sample_panels(cfg, opts, raw, clip)
        for panel in panels:
            save_panel(panel, folder / f"{panel.name}.png")
        title = (f"{frame_dir} (validation sample {index}, person {opts.person})\n"
                 f"true: {names[label]}    predicted: {names[predicted]} (p = {probabilities[predicted]:.2f})")
        save_sheet(panels, sheet_size_px(len(maps), "hyperedge" in raw), title, folder / "sheet.png")
        if opts.save_raw:
            np.savez(folder / "attention.npz", **raw, label=label, predicted=predicted,
                     probabilities=probabilities, frame_dir=frame_dir, clip=clip, person=opts.person)
        print(f"{index:5d}  {frame_dir}  {names[label]} -> {names[predicted]} "
              f"(p = {probabilities[predicted]:.2f})  {folder}", flush=True)
        folders.append(folder)
    return folders
