"""Build a PYSKL skeleton pickle from a folder of per-video keypoint files and a CSV of labels.

    python -m lib.data.build_dataset --keypoints DIR --labels labels.csv --out data/action/mydata.pkl

The CSV has a header row and the columns name,label, plus optionally split (train or val) or subject.
`name` is a keypoint file in DIR (.npz, .npy or .json, see lib/data/keypoint_files.py), with or without its
extension; without the extension it is the sample's frame_dir. `label` is a class name or a 0-based integer class id.
The splits are the CSV's (custom_train / custom_val), whole subjects held out (xsub_train / xsub_val), or
else each class split at random (custom_*), seeded.

Writes D/S.pkl, D/S_classes.txt (one class name a line) and D/S.yaml (the base config pointed at the new
data), and only after every row and file was checked: an error writes nothing.
"""
import argparse
import csv
import re
import shlex
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from lib.cli import run_main
from lib.config import Config, apply_mapping, read_yaml, validate
from lib.data.keypoint_files import DEFAULT_IMG_SHAPE, read_array_file, read_json_file
from lib.data.pyskl import check_annotation
from lib.data.synthetic import write_pickle
from lib.errors import UserError

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_BASE_CONFIG = "configs/action/train_NTU60_xsub_small.yaml"  # relative to PROJECT_ROOT
EXTENSIONS = (".npz", ".npy", ".json")
COLUMNS = ("name", "label", "split", "subject")
CLASS_ID = re.compile(r"[+-]?\d+")


@dataclass
class Row:
    line: int  # line of the CSV file
    name: str  # as written: a file name or stem in the keypoint folder
    label: str
    group: str | None = None  # the split (train / val) or the subject, when the CSV has that column


def sample_name(name: str) -> str:
    """The frame_dir of a CSV name: the name without a keypoint file extension."""
    suffix = Path(name).suffix
    return name[:-len(suffix)] if suffix in EXTENSIONS else name


def read_rows(path: Path) -> tuple[list[Row], str | None]:
    """The rows of the labels CSV and its split column ('split', 'subject' or None), each row checked."""
    if not path.is_file():
        raise UserError(f"labels CSV not found: {path} (columns name,label and optionally split or subject)")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = [column.strip().lower() for column in next(reader, [])]
            table = [(reader.line_num, fields) for fields in reader if any(field.strip() for field in fields)]
    except (UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"cannot read {path}: {' '.join(str(e).split())[:120]}; save it as UTF-8 CSV") from None
    expected = "the first row must name the columns: name,label and optionally split or subject"
    missing = [column for column in ("name", "label") if column not in header]
    unknown = [column for column in header if column not in COLUMNS]
    if missing or unknown:
        problem = f"no column {', '.join(missing)}" if missing else f"unknown column {', '.join(unknown)}"
        raise UserError(f"{path}:1: {problem} in the header '{','.join(header)}'; {expected}")
    if "split" in header and "subject" in header:
        raise UserError(f"{path}:1: both split and subject columns; keep split (train / val as given) "
                        "or subject (whole subjects held out), not both")
    column = "split" if "split" in header else "subject" if "subject" in header else None
    if not table:
        raise UserError(f"{path} has no rows below its header; add one row per video")
    rows, seen = [], {}
    for line, fields in table:
        where = f"{path}:{line}"
        if len(fields) != len(header):
            raise UserError(f"{where}: {len(fields)} fields, but the header has {len(header)} ({','.join(header)})")
        values = dict(zip(header, (field.strip() for field in fields)))
        row = Row(line, values["name"], values["label"], values.get(column))
        if not row.name:
            raise UserError(f"{where}: empty name; give the keypoint file's name")
        if not row.label:
            raise UserError(f"{where}: empty label for {row.name}; give a class name or a 0-based class id")
        if column == "split" and row.group not in ("train", "val"):
            raise UserError(f"{where}: split '{row.group}' for {row.name}; it must be train or val")
        if column == "subject" and not row.group:
            raise UserError(f"{where}: empty subject for {row.name}; give every row its subject")
        name = sample_name(row.name)
        if name in seen:
            raise UserError(f"{where}: {name} is listed twice (also {path}:{seen[name]}); keep one row per video")
        seen[name] = line
        rows.append(row)
    return rows, column


def read_class_names(path: Path) -> list[str]:
    if not path.is_file():
        raise UserError(f"class names file not found: {path} (one class name a line, line k = class k-1)")
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not names:
        raise UserError(f"{path} is empty; write one class name a line")
    repeated = [name for name, count in Counter(names).items() if count > 1]
    if repeated:
        raise UserError(f"{path} names the class '{repeated[0]}' twice; every class needs its own name")
    return names


def label_ids(rows: list[Row], path: Path, class_names_file: Path | None) -> tuple[list[int], list[str]]:
    """(each row's 0-based label, the class names): integer ids as written, named 'class k' or by the class
    names file; or class names, numbered in sorted order or in the class names file's order."""
    is_id = [CLASS_ID.fullmatch(row.label) is not None for row in rows]
    kinds = ("a class name", "an integer class id")
    for row, row_is_id in zip(rows, is_id):
        if row_is_id != is_id[0]:
            raise UserError(f"{path}:{row.line}: label '{row.label}' is {kinds[row_is_id]}, but {path}:{rows[0].line} "
                            f"has {kinds[is_id[0]]}; use class names in every row or 0-based class ids in every row")
    names = read_class_names(class_names_file) if class_names_file else None
    if is_id[0]:
        ids = [int(row.label) for row in rows]
        num_classes = len(names) if names else max(ids) + 1
        for row, label in zip(rows, ids):
            if label < 0:
                raise UserError(f"{path}:{row.line}: class id {label} is negative; class ids are 0-based")
            if label >= num_classes:
                raise UserError(f"{path}:{row.line}: class id {label}, but {class_names_file} names only "
                                f"{num_classes} classes (ids 0..{num_classes - 1}, line k is id k-1)")
        names = names or [f"class {k}" for k in range(num_classes)]
    else:
        names = names or sorted({row.label for row in rows})
        index = {name: k for k, name in enumerate(names)}
        for row in rows:
            if row.label not in index:
                raise UserError(f"{path}:{row.line}: class '{row.label}' is not in {class_names_file}; "
                                "add it there or fix the label")
        ids = [index[row.label] for row in rows]
    if len(names) < 2:
        raise UserError(f"{path}: every row has the class '{names[0]}'; a classifier needs at least 2 classes")
    return ids, names


def held_out_subjects(rows: list[Row], val_fraction: float, rng, path: Path) -> list[bool]:
    """Whether each row is in validation: subjects in random order go to validation until about
    val_fraction of the samples are there; at least one subject stays on each side."""
    counts = Counter(row.group for row in rows)
    if len(counts) < 2:
        raise UserError(f"{path}: every row has the subject '{rows[0].group}', so holding out subjects leaves "
                        "training or validation empty; add subjects, or drop the subject column")
    subjects = sorted(counts)
    val, size = set(), 0
    for k in rng.permutation(len(subjects))[:-1]:
        if val and size >= val_fraction * len(rows):
            break
        val.add(subjects[k])
        size += counts[subjects[k]]
    return [row.group in val for row in rows]


def stratified(rows: list[Row], labels: list[int], classes: list[str], val_fraction: float, rng,
               path: Path) -> list[bool]:
    """Whether each row is in validation: round(val_fraction * n) random samples of each class of n, at
    least 1 and at most n-1."""
    members = defaultdict(list)  # class -> row indices
    for i, label in enumerate(labels):
        members[label].append(i)
    in_val = [False] * len(rows)
    for label in sorted(members):
        indices = members[label]
        if len(indices) < 2:
            raise UserError(f"{path}:{rows[indices[0]].line}: class '{classes[label]}' has only this sample, but a "
                            "split by class needs 2 (one to train, one to validate); add samples of it, remove "
                            "the row, or give a split or subject column")
        count = min(max(round(val_fraction * len(indices)), 1), len(indices) - 1)
        for i in rng.choice(indices, count, replace=False):
            in_val[i] = True
    return in_val


def assign_splits(rows: list[Row], labels: list[int], classes: list[str], column: str | None, val_fraction: float,
                  seed: int, path: Path) -> tuple[str, dict]:
    """(data_split, {split name: [frame_dir, ...]} in CSV order) from the CSV's split or subject column,
    or stratified by class."""
    rng = np.random.default_rng(seed)
    if column == "split":
        in_val = [row.group == "val" for row in rows]
        for half in ("train", "val"):
            if all(row.group != half for row in rows):
                raise UserError(f"{path}: no row has split {half}; training needs both train and val rows")
    elif column == "subject":
        in_val = held_out_subjects(rows, val_fraction, rng, path)
    else:
        in_val = stratified(rows, labels, classes, val_fraction, rng, path)
    data_split = "xsub" if column == "subject" else "custom"
    return data_split, {
        f"{data_split}_{half}": [sample_name(row.name) for row, val in zip(rows, in_val) if val == (half == "val")]
        for half in ("train", "val")}


def find_file(folder: Path, name: str, where: str) -> Path:
    """The keypoint file of a CSV name: the file itself, or the name plus one of EXTENSIONS."""
    candidates = [folder / name] if Path(name).suffix in EXTENSIONS else [folder / (name + ext) for ext in EXTENSIONS]
    found = [path for path in candidates if path.is_file()]
    if not found:
        raise UserError(f"{where}: no keypoint file for {name} in {folder} (tried "
                        f"{', '.join(path.name for path in candidates)}); add the file or remove the row")
    if len(found) > 1:
        raise UserError(f"{where}: {name} matches {' and '.join(path.name for path in found)}; "
                        "write the name with its extension")
    return found[0]


def build(args) -> tuple[dict, list[str], str]:
    """(the PYSKL data, the class names, data_split) from the CSV and the keypoint files, all checked."""
    rows, column = read_rows(args.labels)
    labels, classes = label_ids(rows, args.labels, args.class_names)
    data_split, splits = assign_splits(rows, labels, classes, column, args.val_fraction, args.seed, args.labels)
    files = [find_file(args.keypoints, row.name, f"{args.labels}:{row.line}") for row in rows]
    annotations = []
    for row, label, path in zip(rows, labels, files):
        read = read_json_file if path.suffix == ".json" else read_array_file
        sample = read(path, tuple(args.img_shape))
        if not sample.score.any():
            raise UserError(f"{path}: no person detected in any frame (every keypoint score is 0); extract its "
                            f"poses again or remove the row {args.labels}:{row.line}")
        annotation = {"frame_dir": sample_name(row.name), "label": label, "img_shape": sample.img_hw,
                      "original_shape": sample.img_hw, "total_frames": sample.keypoint.shape[1],
                      "keypoint": sample.keypoint,  # float32 [M, T, 17, 2]
                      "keypoint_score": sample.score}  # float32 [M, T, 17]
        check_annotation(annotation, path)
        annotations.append(annotation)
    return {"split": splits, "annotations": annotations}, classes, data_split


def output_paths(out: Path) -> tuple[Path, Path, Path]:
    """(D/S.pkl, D/S_classes.txt, D/S.yaml)."""
    return out, out.with_name(f"{out.stem}_classes.txt"), out.with_suffix(".yaml")


def make_config(base: Path, out: Path, num_classes: int, data_split: str) -> dict:
    """The base config's keys with the dataset's replacing its data keys, checked as train_action.py would."""
    settings = read_yaml(base, "base config")
    if not isinstance(settings, dict):
        raise UserError(f"base config {base} must hold a mapping of config keys")
    settings.update(dataset=out.stem, data_root=str(out.parent), action_classes=num_classes,
                    label_map=str(output_paths(out)[1]), data_split=data_split)
    config = Config(name=out.stem)
    apply_mapping(config, settings, f"base config {base}")
    validate(config)
    return settings


def write(out: Path, data: dict, classes: list[str], settings: dict, command: str):
    """The pickle (atomically), then the class names, then the config."""
    _, classes_path, config_path = output_paths(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_pickle(data, out)
    classes_path.write_text("".join(f"{name}\n" for name in classes), encoding="utf-8")
    config_path.write_text(f"# made by: {command}\n" + yaml.safe_dump(settings, sort_keys=False), encoding="utf-8")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else [str(arg) for arg in argv]
    parser = argparse.ArgumentParser(prog="python -m lib.data.build_dataset", description=__doc__.split("\n")[0])
    parser.add_argument("--keypoints", required=True, type=Path, help="folder of .npz / .npy / .json keypoint files")
    parser.add_argument("--labels", required=True, type=Path, help="CSV: name,label[,split | ,subject]")
    parser.add_argument("--out", required=True, type=Path, help="pickle to write, e.g. data/action/mydata.pkl")
    parser.add_argument("--val-fraction", type=float, default=0.2,
                        help="share of validation samples without a split column (default 0.2)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split (default 0)")
    parser.add_argument("--class-names", type=Path, default=None,
                        help="one class name a line: names integer ids (line k = id k-1) or orders named classes")
    parser.add_argument("--base-config", type=Path, default=PROJECT_ROOT / DEFAULT_BASE_CONFIG,
                        help=f"config the written one starts from (default {DEFAULT_BASE_CONFIG})")
    parser.add_argument("--img-shape", type=int, nargs=2, default=DEFAULT_IMG_SHAPE, metavar=("H", "W"),
                        help="image size of keypoint files that do not give it (default %(default)s)")
    args = parser.parse_args(argv)
    if args.out.suffix != ".pkl":
        raise UserError(f"--out {args.out} must end in .pkl (the config, class names and cache go beside it)")
    if not 0 < args.val_fraction < 1:
        raise UserError(f"--val-fraction must be between 0 and 1 (exclusive), got {args.val_fraction}")
    if min(args.img_shape) <= 0:
        raise UserError(f"--img-shape needs a positive height and width, got {args.img_shape}")
    if not args.keypoints.is_dir():
        raise UserError(f"--keypoints {args.keypoints} is not a folder; give the folder of keypoint files")

    data, classes, data_split = build(args)
    settings = make_config(args.base_config, args.out, len(classes), data_split)
    write(args.out, data, classes, settings, shlex.join(["python", "-m", "lib.data.build_dataset", *argv]))

    sizes = ", ".join(f"{name} {len(members)}" for name, members in data["split"].items())
    print(f"{len(data['annotations'])} samples, {len(classes)} classes; {sizes}")
    print("wrote " + "\n      ".join(map(str, output_paths(args.out))))
    print(f"train: python train_action.py --config {shlex.quote(str(output_paths(args.out)[2]))} "
          f"--checkpoint {shlex.quote(f'checkpoint/action/{args.out.stem}')}")


if __name__ == "__main__":
    sys.exit(run_main(main))
