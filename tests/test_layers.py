"""The floors of lib/: every import of a module of ours runs down to a lower floor or stays within its
package, so that a lower package never needs a higher one (docs/design.md, project layout). Read from the
source with ast, including the imports inside functions."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FLOORS = [
    {"errors", "skeleton"},
    {"config", "onnx_session"},
    {"cli"},
    {"data"},
    {"model"},
    {"engine"},
    {"video", "vis"},
    {"deploy"},
    {"fewshot"},
    {"demo"},
]
FLOOR = {name: level for level, names in enumerate(FLOORS) for name in names}


def imported_lib_modules(path: Path) -> list[tuple[int, str]]:
    """(line, top-level name under lib) of every `import lib.X...` and `from lib[.X] import ...` in a file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "lib":
            parts = node.module.split(".")
            names = [parts[1]] if len(parts) > 1 else [alias.name for alias in node.names]
            found += [(node.lineno, name) for name in names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[1]) for alias in node.names
                      if alias.name.startswith("lib.")]
    return found


def test_every_package_of_lib_has_a_floor():
    packages = {p.stem if p.suffix == ".py" else p.name for p in (ROOT / "lib").iterdir()
                if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").exists()}
    assert packages == set(FLOOR), packages ^ set(FLOOR)


def test_every_import_runs_down_or_stays_in_its_package():
    upward = []
    for path in sorted((ROOT / "lib").rglob("*.py")):
        relative = path.relative_to(ROOT / "lib")
        own = relative.parts[0] if len(relative.parts) > 1 else relative.stem
        if own == "__init__":
            continue
        for line, name in imported_lib_modules(path):
            if name != own and FLOOR[name] >= FLOOR[own]:
                upward.append(f"lib/{relative}:{line} imports lib.{name} (floor {FLOOR[name]} >= {FLOOR[own]})")
    assert not upward, "\n".join(upward)


def test_the_check_sees_an_import_that_runs_up(tmp_path):
    module = tmp_path / "module.py"
    module.write_text("import numpy\nfrom lib.errors import UserError\n\ndef f():\n    from lib.fewshot.gallery import Gallery\n")
    assert imported_lib_modules(module) == [(2, "errors"), (5, "fewshot")]
