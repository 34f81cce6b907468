"""Class names: one name a line, line k is label k-1. Used wherever a class is shown."""
from pathlib import Path

from lib.errors import UserError

PROJECT_ROOT = Path(__file__).resolve().parents[2]
BUILTIN_LABEL_MAPS = {
    60: PROJECT_ROOT / "configs/action/ntu60_classes.txt",
    120: PROJECT_ROOT / "configs/action/ntu120_classes.txt",
}


def class_names(num_classes: int, label_map=None) -> list[str]:
    """The names of labels 0..num_classes-1: from `label_map` when given, else the NTU60 or NTU120 list
    for 60 or 120 classes, else 'class k'."""
    path = Path(label_map) if label_map else BUILTIN_LABEL_MAPS.get(num_classes)
    if path is None:
        return [f"class {k}" for k in range(num_classes)]
    if not path.is_file():
        raise UserError(f"label map not found: {path} (data.label_map: one class name a line)")
    names = [line.strip().rstrip(".") for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(names) != num_classes:
        raise UserError(f"label map {path} has {len(names)} class names but action_classes is {num_classes}")
    return names
