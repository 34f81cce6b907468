"""Drawing on video frames (OpenCV): tracked skeletons, the top classes of the current window, and a
timeline picture of the class probabilities over time (matplotlib)."""
import numpy as np

from lib.skeleton import COCO_BONES
from lib.video.frames import require_cv2

PERSON_COLOURS = ((0, 200, 255), (255, 160, 0), (80, 220, 80), (220, 80, 220), (200, 200, 200))  # BGR
MIN_DRAWN_SCORE = 0.3


def draw_skeletons(frame: np.ndarray, keypoint: np.ndarray, score: np.ndarray, thickness: int = 2) -> np.ndarray:
    """Draw persons [P, 17, 2] with scores [P, 17] into the BGR frame (in place; returned); person p in
    colour p. Joints scored below MIN_DRAWN_SCORE are left out."""
    cv2 = require_cv2()
    for p, (points, scores) in enumerate(zip(keypoint, score)):
        colour = PERSON_COLOURS[p % len(PERSON_COLOURS)]
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
