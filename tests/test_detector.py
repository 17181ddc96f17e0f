"""A model loaded for detection: settings resolved for it, the overlap warning, the run's metadata."""

import pytest

from geodet.config import DetectConfig
from geodet.errors import GeodetError
from geodet.inference.detector import (
    config_for_model,
    default_model_path,
    load_detector,
    model_file_hash,
    model_file_metadata,
    model_overlap_warning,
    run_metadata,
)
from geodet.modeling.modelfile import load_model, model_hash


@pytest.fixture(scope="module")
def default_meta():
    return load_model(default_model_path())[1]


def test_settings_are_the_models_unless_given(default_meta):
    run = config_for_model(DetectConfig(), default_meta)
    assert (run.chip_size, run.overlap, run.bands) == (default_meta.chip_size, default_meta.overlap,
                                                      tuple(default_meta.bands))
    given = config_for_model(DetectConfig(chip_size=96, overlap=8, bands=(3, 2, 1)), default_meta)
    assert (given.chip_size, given.overlap, given.bands) == (96, 8, (3, 2, 1))
    with pytest.raises(GeodetError, match="must be smaller than the chip size"):
        config_for_model(DetectConfig(chip_size=64, overlap=64), default_meta)


def test_overlap_warning_names_the_largest_anchor_in_scene_pixels(default_meta):
    assert model_overlap_warning(default_meta, 10_000) is None
    warning = model_overlap_warning(default_meta, 0)
    assert warning and "exceeds the chip overlap (0 px)" in warning


def test_the_run_metadata_is_the_model_files():
    detector = load_detector(None, DetectConfig(device="cpu"))
    path = default_model_path()
    assert run_metadata(detector) == model_file_metadata(None)
    assert detector.model_hash == model_file_hash(None) == model_hash(path)
    assert run_metadata(detector)["model_name"] == "default.pt"
    assert model_file_metadata((detector.net, detector.meta)) is None  # an in-memory model names no file
