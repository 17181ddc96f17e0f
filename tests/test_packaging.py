"""The wheel holds both packages, the bundled model and the console script."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_wheel_contents(tmp_path):
    pytest.importorskip("setuptools")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path),
         str(REPO)],
        capture_output=True, text=True,
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot build a wheel offline here: {proc.stderr.strip().splitlines()[-1:]}")
    wheel = next(tmp_path.glob("geodet-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "geodet_cli/main.py" in names and "geodet_cli/detect_cmd.py" in names
    assert "geodet/weights/default.pt" in names
    assert "geodet/testing/synthetic.py" in names  # bench/, sample_data/ and users import it from a wheel
    for package in ("core", "io", "modeling", "learning", "inference", "reports", "testing"):  # every subpackage
        shipped = {n for n in names if n.startswith(f"geodet/{package}/") and n.endswith(".py")}
        here = {f"geodet/{package}/{p.name}" for p in (REPO / "geodet" / package).glob("*.py")}
        assert here and shipped == here, package
    assert "geodet/inference/detection.py" in names and "geodet/_legacy.py" in names
    assert not any(n.startswith("cli/") for n in names)  # no clashing top-level `cli`
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "geodet = geodet_cli.main:main" in zipfile.ZipFile(wheel).read(entry).decode()


def test_console_script_runs():
    proc = subprocess.run([sys.executable, "-m", "geodet_cli.main", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "detect" in proc.stdout
