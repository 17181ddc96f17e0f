"""The notebooks run top to bottom on the CPU, are committed without outputs and use the public API."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="needs the dev extra (nbformat, nbclient, ipykernel)")
nbclient = pytest.importorskip("nbclient", reason="needs the dev extra (nbformat, nbclient, ipykernel)")
pytest.importorskip("ipykernel", reason="needs the dev extra (nbformat, nbclient, ipykernel)")

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
#: Each notebook and the figures it draws.
FIGURES = {"01_quickstart.ipynb": 4, "02_small_objects.ipynb": 2}
NAMES = sorted(FIGURES)

#: Wall-clock budget of one whole notebook, kernel start included.
BUDGET_S = 180.0

#: What notebooks may use of geodet: the top-level API and these modules.
PUBLIC = {
    "tile", "train", "detect", "write_detections", "evaluate", "fit_anchors", "anchor_coverage",
    "load_model", "plot", "config", "modeling.anchors", "GeodetError", "__version__",
}


def read(name: str):
    return nbformat.read(NOTEBOOKS / name, as_version=4)


def code_of(nb) -> str:
    return "\n".join(cell.source for cell in nb.cells if cell.cell_type == "code")


@pytest.mark.parametrize("name", NAMES)
def test_notebook_is_committed_without_outputs(name):
    nb = read(name)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{name}: clear the outputs before committing"


@pytest.mark.parametrize("name", NAMES)
def test_notebook_uses_public_api_and_relative_sample_paths(name):
    code = code_of(read(name))
    # not logger names in strings; a subpackage's module by its dotted name (modeling.anchors)
    used = set(re.findall(r"(?<![\"'])\bgeodet\.((?:core|io|modeling|learning|inference|reports)\.\w+|\w+)", code))
    assert used and used <= PUBLIC, f"{name} uses non-public geodet names: {sorted(used - PUBLIC)}"
    assert "../sample_data/suburb.tif" in code
    assert "tempfile.mkdtemp" in code  # outputs go to a temporary folder
    assert "/work/" not in code and "C:\\" not in code


@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_on_cpu(name, tmp_path, monkeypatch):
    # The kernel inherits the environment: this checkout's geodet, no GPU, and
    # tempfile.mkdtemp() inside tmp_path so the notebook's outputs are cleaned up.
    import os

    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    before = sorted(p.name for p in NOTEBOOKS.iterdir())

    nb = read(name)
    deadline = time.monotonic() + BUDGET_S
    client = nbclient.NotebookClient(
        nb,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOKS)}},  # cwd = notebooks/, as in Jupyter
        timeout_func=lambda cell: max(1, int(deadline - time.monotonic())),
        startup_timeout=60,
    )
    start = time.monotonic()
    client.execute()  # raises CellExecutionError on the first failing cell
    elapsed = time.monotonic() - start
    print(f"{name}: {elapsed:.1f} s")

    assert sorted(p.name for p in NOTEBOOKS.iterdir()) == before, "the notebook wrote into notebooks/"
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) == FIGURES[name]  # the figures were drawn
    work = [p for p in tmp_path.iterdir() if p.name.startswith("geodet-")]
    assert len(work) == 1 and (work[0] / "chips" / "annotations.json").exists()
    if name == "01_quickstart.ipynb":
        assert (work[0] / "pools.pt").exists() and (work[0] / "quicklook.png").exists()
