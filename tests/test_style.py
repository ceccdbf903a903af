"""One voice across the package: line width, no annotations in signatures (shapes live in the
docstrings; dataclass fields are the one place with types), a docstring on every module, and no
path of a particular machine anywhere in the project."""
import ast
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULES = sorted((ROOT / "minillm").rglob("*.py"))
WIDTH = 100


@pytest.mark.parametrize("path", MODULES, ids=[str(p.relative_to(ROOT)) for p in MODULES])
def test_module_voice(path):
    text = path.read_text(encoding="utf-8")
    long = [n for n, line in enumerate(text.splitlines(), 1) if len(line) > WIDTH]
    assert not long, f"lines longer than {WIDTH} characters: {long}"
    tree = ast.parse(text)
    assert ast.get_docstring(tree), "the module has no docstring"
    assert "from __future__" not in text
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
            annotated = [a.arg for a in args if a.annotation is not None]
            assert not annotated and node.returns is None, \
                f"{node.name} (line {node.lineno}) has type annotations"


def project_files():
    """The files git tracks (or, outside a git checkout, every file not in a hidden folder)."""
    try:
        names = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                               check=True).stdout.splitlines()
        return [ROOT / name for name in names if (ROOT / name).is_file()]
    except (OSError, subprocess.CalledProcessError):
        return [p for p in ROOT.rglob("*") if p.is_file()
                and not any(part.startswith(".") for part in p.relative_to(ROOT).parts)]


def test_no_machine_paths():
    roots = ("/" + "work" + "/", "/" + "root" + "/", "/" + "home" + "/")
    files = [p for p in project_files()
             if p.suffix in {".py", ".md", ".ipynb", ".toml", ".txt", ".json", ".cfg", ""}]
    found = [str(p.relative_to(ROOT)) for p in files
             if any(r in p.read_text(encoding="utf-8", errors="ignore") for r in roots)]
    assert not found, f"machine paths in {found}"
