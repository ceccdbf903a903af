"""Every teaching notebook runs top to bottom from a clean kernel, and the pictures are there."""
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
pytest.importorskip("nbclient")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "notebooks"))
from run_all import execute, notebooks  # noqa: E402

PATHS = notebooks()
# notebooks whose point is a picture of attention weights (or other figures) must draw it
MUST_DRAW = ("02_", "03_", "04_", "05_", "06_", "07_", "08_", "09_", "10_", "11_", "12_", "13_",
             "14_", "15_", "16_", "17_", "18_")


def test_the_series_is_complete():
    numbers = sorted(int(p.name[:2]) for p in PATHS)
    assert numbers == list(range(1, len(numbers) + 1)), [p.name for p in PATHS]


@pytest.mark.parametrize("path", PATHS, ids=[p.stem for p in PATHS])
def test_notebook_runs_clean(path):
    nb, seconds = execute(path)
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert not [o for o in outputs if o.get("name") == "stderr" and "Warning" in o.get("text", "")], \
        "warnings spill into the outputs"
    if path.name.startswith(MUST_DRAW):
        assert any("image/png" in o.get("data", {}) for o in outputs), f"{path.name} drew no picture"
    saved = nbformat.read(path, as_version=4)
    counts = [c.get("execution_count") for c in saved.cells if c.cell_type == "code"]
    assert counts == list(range(1, len(counts) + 1)), \
        f"{path.name} is not saved as one clean top-to-bottom run: python notebooks/run_all.py {path.name[:2]}"
