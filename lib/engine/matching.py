"""Nearest-class matching of unit-length embeddings (numpy only, so ONNX inference uses it without torch):
class prototypes, cosine scores, the "unknown" threshold a gallery suggests, and the exemplar draws of
one-shot and k-shot evaluation."""
import numpy as np

UNKNOWN = -1  # the predicted class of a clip whose best similarity is below the threshold


def normalize(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.maximum(np.linalg.norm(vectors, axis=-1, keepdims=True), 1e-12)


def prototypes(embeddings: np.ndarray, labels: np.ndarray, classes) -> np.ndarray:
    """[C, D]: the unit-length mean embedding of each class in `classes` (with one example, the example)."""
    return normalize(np.stack([embeddings[labels == c].mean(axis=0) for c in classes]))


def nearest(queries: np.ndarray, prototypes_: np.ndarray, threshold: float = None) -> tuple[np.ndarray, np.ndarray]:
    """(the index of the most similar prototype of each query, its cosine similarity); with `threshold`,
    UNKNOWN where that similarity is below it. queries [Q, D], prototypes [C, D], both unit length."""
    similarity = queries @ prototypes_.T  # [Q, C]
    best = similarity.argmax(axis=1)
    score = similarity[np.arange(len(queries)), best]
    if threshold is not None:
        best = np.where(score >= threshold, best, UNKNOWN)
    return best, score


def leave_one_out_similarities(embeddings: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(genuine, impostor): for each example of a class with at least two, its similarity to the prototype
    of its class made without it; for each example, when there are other classes, its highest similarity
    to another class's prototype."""
    classes = np.unique(labels)
    full = prototypes(embeddings, labels, classes)
    genuine, impostor = [], []
    for i, (embedding, label) in enumerate(zip(embeddings, labels)):
        own = labels == label
        if own.sum() > 1:
            others = own.copy()
            others[i] = False
            genuine.append(float(normalize(embeddings[others].mean(axis=0)) @ embedding))
        if len(classes) > 1:
            impostor.append(float((full[classes != label] @ embedding).max()))
    return np.array(genuine), np.array(impostor)


def suggest_threshold(embeddings: np.ndarray, labels: np.ndarray) -> float:
    """The similarity below which a clip is "unknown": the threshold that best separates the gallery's own
    leave-one-out similarities (an example to its class without it: should be accepted) from each
    example's best similarity to another class (should be rejected), by balanced accuracy, placed
    half-way between the two nearest values it separates. With only one kind of similarity it sits just
    outside that kind's range; with neither (one example of one class), 0."""
    genuine, impostor = leave_one_out_similarities(embeddings, labels)
    if not len(genuine) and not len(impostor):
        return 0.0
    values = np.unique(np.concatenate([genuine, impostor]))
    candidates = np.concatenate([values, [values[-1] + 1e-3]])  # accept from each value on, or nothing
    accepted = np.array([(genuine >= t).mean() if len(genuine) else np.nan for t in candidates])
    rejected = np.array([(impostor < t).mean() if len(impostor) else np.nan for t in candidates])
    best = int(np.argmax(np.nanmean(np.stack([accepted, rejected]), axis=0)))
    if best == 0:
        return float(values[0] - 1e-3)
    return float((candidates[best - 1] + candidates[best]) / 2) if best < len(values) else float(values[-1] + 1e-3)


def exemplar_positions(labels: np.ndarray, names, named: set) -> dict:
    """{class: position of its exemplar}: the sample named in `named` when the class has one, else its first
    sample (in the given order)."""
    exemplars = {}
    for i, (label, name) in enumerate(zip(labels, names)):
        label = int(label)
        if label not in exemplars or (str(name) in named and str(names[exemplars[label]]) not in named):
            exemplars[label] = i
    return exemplars


def one_shot_accuracy(embeddings: np.ndarray, labels: np.ndarray, exemplars: dict) -> dict:
    """Every clip that is not an exemplar takes the class of its most similar exemplar (among all
    classes with one). Returns top1 and mean_class_accuracy in percent, the query count, and per query:
    positions, predicted class, similarity."""
    classes = np.array(sorted(exemplars))
    chosen = set(exemplars.values())
    queries = np.array([i for i in range(len(labels)) if i not in chosen and int(labels[i]) in exemplars], dtype=int)
    if not len(queries):
        return {"top1": 0.0, "mean_class_accuracy": 0.0, "queries": 0, "positions": queries,
                "predicted": queries, "similarity": np.zeros(0)}
    index, similarity = nearest(embeddings[queries], embeddings[[exemplars[c] for c in classes]])
    predicted, truth = classes[index], labels[queries]
    per_class = [np.mean(predicted[truth == c] == c) for c in np.unique(truth)]
    return {"top1": 100.0 * float(np.mean(predicted == truth)), "mean_class_accuracy": 100.0 * float(np.mean(per_class)),
            "queries": len(queries), "positions": queries, "predicted": predicted, "similarity": similarity}


def k_shot_draw(labels: np.ndarray, k: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """(support positions, query positions) of one random k-shot draw: k examples of every class that has
    more than k samples; the queries are all other samples of those classes."""
    support = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        if len(members) > k:
            support.extend(rng.choice(members, size=k, replace=False))
    support = np.sort(np.array(support, dtype=int))
    kept = np.isin(labels, labels[support])
    kept[support] = False
    return support, np.flatnonzero(kept)


def k_shot_accuracy(embeddings: np.ndarray, labels: np.ndarray, k: int, draws: int, seed: int = 0) -> dict:
    """Top-1 (percent) of nearest-prototype classification with k random examples a class, over `draws`
    seeded draws: mean, standard deviation, and each draw's value."""
    rng = np.random.default_rng((seed, k))
    values = []
    for _ in range(draws):
        support, queries = k_shot_draw(labels, k, rng)
        if not len(queries):
            break
        classes = np.unique(labels[support])
        index, _ = nearest(embeddings[queries], prototypes(embeddings[support], labels[support], classes))
        values.append(100.0 * float(np.mean(classes[index] == labels[queries])))
    return {"k": k, "mean": float(np.mean(values)) if values else float("nan"),
            "std": float(np.std(values)) if values else float("nan"), "draws": values}
