"""Drawing on video frames (OpenCV): tracked skeletons, the top classes of the current window (of the scene,
or of each person beside them), and pictures (matplotlib): the class probabilities over time and the action
segments."""
import numpy as np

from lib.skeleton import COCO_BONES
from lib.video.frames import require_cv2

PERSON_COLOURS = ((0, 200, 255), (255, 160, 0), (80, 220, 80), (220, 80, 220), (200, 200, 200))  # BGR
MIN_DRAWN_SCORE = 0.3


def person_colour(track: int) -> tuple:
    """The BGR colour of person slot or track `track`."""
    return PERSON_COLOURS[track % len(PERSON_COLOURS)]


def draw_skeletons(frame: np.ndarray, keypoint: np.ndarray, score: np.ndarray, thickness: int = 2,
                   colours: list = None) -> np.ndarray:
    """Draw persons [P, 17, 2] with scores [P, 17] into the BGR frame (in place; returned); person p in
    colours[p] (default: colour p). Joints scored below MIN_DRAWN_SCORE are left out."""
    cv2 = require_cv2()
    for p, (points, scores) in enumerate(zip(keypoint, score)):
        colour = colours[p] if colours else person_colour(p)
        seen = scores >= MIN_DRAWN_SCORE
        pixel = np.round(points).astype(int)
        for a, b in COCO_BONES:
            if seen[a] and seen[b]:
                cv2.line(frame, tuple(pixel[a]), tuple(pixel[b]), colour, thickness, cv2.LINE_AA)
        for j in np.flatnonzero(seen):
            cv2.circle(frame, tuple(pixel[j]), thickness + 1, colour, -1, cv2.LINE_AA)
    return frame


def top_class_text(entry: dict) -> str:
    """'87.5% name' for a class probability, 'sim 0.91 name' for a gallery similarity."""
    if "probability" in entry:
        return f"{100 * entry['probability']:5.1f}% {entry['name']}"
    return f"sim {entry['similarity']:.2f} {entry['name']}"


def draw_top_classes(frame: np.ndarray, top: list) -> np.ndarray:
    """Write the top classes ([{'name', 'probability' or 'similarity'}, ...]) in white on a dark band below
    the frame's top edge (in place)."""
    cv2 = require_cv2()
    scale = max(frame.shape[0] / 720, 0.35)
    font, size, pad = cv2.FONT_HERSHEY_SIMPLEX, 0.8 * scale, max(int(8 * scale), 3)
    texts = [top_class_text(entry) for entry in top]
    (_, height), _ = cv2.getTextSize("Ag", font, size, 1)
    line = height + 2 * pad
    width = max(cv2.getTextSize(text, font, size, 1)[0][0] for text in texts) + 2 * pad
    top_edge = 2 * pad
    band = frame[top_edge:top_edge + line * len(texts) + pad, :width]
    band[:] = (0.45 * band).astype(frame.dtype)  # darken behind the text
    for rank, text in enumerate(texts):
        origin = (pad, top_edge + line * (rank + 1) - pad)
        cv2.putText(frame, text, origin, font, size, (255, 255, 255), 1, cv2.LINE_AA)
    return frame


def window_of_frame(predictions: list, t: int) -> dict:
    """The prediction to show at frame t: among the windows holding t, the one whose centre is nearest;
    before the first window, the first; after the last, the last."""
    holding = [p for p in predictions if p["frames"][0] <= t < p["frames"][1]]
    if not holding:
        return predictions[0] if t < predictions[0]["frames"][0] else predictions[-1]
    return min(holding, key=lambda p: abs((p["frames"][0] + p["frames"][1]) / 2 - t))


def render_video(frames, keypoint: np.ndarray, score: np.ndarray, predictions: list, writer, top_k: int = 3) -> int:
    """Write every frame with its tracked skeletons (keypoint [M, T, 17, 2], score [M, T, 17]) and the top
    classes of its window; returns the number of frames written."""
    count = 0
    for t, frame in enumerate(frames):
        if t < keypoint.shape[1]:
            draw_skeletons(frame, keypoint[:, t], score[:, t])
        draw_top_classes(frame, window_of_frame(predictions, t)["top"][:top_k])
        writer.write(frame)
        count += 1
    writer.close()
    return count


def draw_person_label(frame: np.ndarray, text: str, points: np.ndarray, seen: np.ndarray, colour) -> np.ndarray:
    """Write `text` in the person's colour on a dark band just above their highest seen joint (in place)."""
    cv2 = require_cv2()
    scale = max(frame.shape[0] / 720, 0.35)
    font, size, pad = cv2.FONT_HERSHEY_SIMPLEX, 0.6 * scale, max(int(5 * scale), 2)
    (width, height), _ = cv2.getTextSize(text, font, size, 1)
    x = int(np.clip(points[seen, 0].min(), 0, max(frame.shape[1] - width - 2 * pad, 0)))
    y = int(np.clip(points[seen, 1].min() - 2 * pad, height + 2 * pad, frame.shape[0]))
    band = frame[y - height - 2 * pad:y, x:x + width + 2 * pad]
    band[:] = (0.35 * band).astype(frame.dtype)
    cv2.putText(frame, text, (x + pad, y - pad), font, size, colour, 1, cv2.LINE_AA)
    return frame


def render_persons(frames, poses: list, predictions: list, writer) -> int:
    """Write every frame with each tracked person's skeleton in the track's colour and, beside the person,
    the top class of their window that holds the frame (the one whose centre is nearest); `poses`: per
    frame {track id: (keypoint [17, 2], score [17])}, `predictions`: per person and window (with `track`).
    Returns the number of frames written."""
    by_track = {}
    for p in predictions:
        by_track.setdefault(p["track"], []).append(p)
    count = 0
    for t, frame in enumerate(frames):
        for track, (points, scores) in (poses[t].items() if t < len(poses) else ()):
            colour = person_colour(track)
            draw_skeletons(frame, points[None], scores[None], colours=[colour])
            holding = [p for p in by_track.get(track, ()) if p["frames"][0] <= t < p["frames"][1]]
            seen = scores >= MIN_DRAWN_SCORE
            if holding and seen.any():
                nearest = min(holding, key=lambda p: abs((p["frames"][0] + p["frames"][1]) / 2 - t))
                decided = nearest.get("class", nearest["top"][0]["name"])  # a gallery's "unknown" wins
                text = top_class_text(nearest["top"][0]) if decided == nearest["top"][0]["name"] else decided
                draw_person_label(frame, f"{track}: {text}", points, seen, colour)
        writer.write(frame)
        count += 1
    writer.close()
    return count


def draw_timeline(predictions: list, class_names: list, fps: float, path, title: str, num_classes: int = 5):
    """A PNG of the probability (of a gallery's classes: the cosine similarity) of the `num_classes` classes
    that reach the highest value, against the time of each window's centre, under `title` (the video and
    the model)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    key = "probabilities" if "probabilities" in predictions[0] else "similarities"
    probabilities = np.stack([np.asarray(p[key]) for p in predictions])  # [windows, K]
    seconds = np.array([(p["frames"][0] + p["frames"][1]) / 2 / fps for p in predictions])
    shown = np.argsort(-probabilities.max(axis=0))[:num_classes]
    fig = Figure(figsize=(10, 3.6))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for k in shown:
        ax.plot(seconds, probabilities[:, k], marker="o" if len(seconds) < 30 else None, label=class_names[k])
    ax.set_xlabel("time of the window's centre (s)")
    ax.set_ylabel("probability" if key == "probabilities" else "cosine similarity")
    ax.set_ylim(0 if key == "probabilities" else -1, 1)
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=10)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def draw_segments(rows: dict, class_names: list, duration_s: float, path, title: str):
    """A PNG of the action segments (lib.deploy.segments) of each row of `rows` ({track or None: segments}),
    one row each ("person {track}", or "scene"): a bar per segment from its start to its end in its class's
    colour (unknown: grey), with the class name inside when it fits, under `title` (the video and the
    model)."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from lib.engine.matching import UNKNOWN

    colours = colormaps["tab10" if len(class_names) <= 10 else "tab20"]  # repeated past 20 classes
    fig = Figure(figsize=(10, 1.4 + 0.5 * len(rows)))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    bars = []  # (bar, class name)
    for y, row in enumerate(rows.values()):
        for segment in row:
            label = segment["label"]
            colour = "0.88" if label == UNKNOWN else colours(label % colours.N)
            bar = ax.barh(y, segment["end_s"] - segment["start_s"], left=segment["start_s"], height=0.7,
                          color=colour, edgecolor="white")[0]
            bars.append((bar, segment["class"]))
    ax.set_yticks(range(len(rows)), ["scene" if track is None else f"person {track}" for track in rows])
    ax.set_ylim(len(rows) - 0.5, -0.5)  # the first row on top
    ax.set_xlim(0, duration_s)
    ax.set_xlabel("time (s)")
    ax.grid(axis="x", alpha=0.3)
    ax.set_axisbelow(True)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    renderer = fig.canvas.get_renderer()
    for bar, name in bars:
        text = ax.text(bar.get_x() + bar.get_width() / 2, bar.get_y() + bar.get_height() / 2, name,
                       ha="center", va="center", fontsize=8, clip_on=True)
        if text.get_window_extent(renderer).width > bar.get_window_extent(renderer).width - 4:
            text.remove()  # does not fit inside its bar
    fig.savefig(path, dpi=100)
