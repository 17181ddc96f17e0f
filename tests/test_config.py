"""Settings: one home per default, one name per idea, one error type for a bad setting."""

from __future__ import annotations

import pytest

from geodet.config import MODEL_FILE_KEYS, ModelConfig, check_assigner, from_dict, to_dict
from geodet.errors import ConfigError, GeodetError


def test_model_config_is_stored_under_the_file_keys_and_read_under_either_name():
    cfg = ModelConfig(chip_score_threshold=0.01, chip_nms_iou=0.6)
    data = to_dict(cfg)
    assert data["score_thresh"] == 0.01 and data["nms_iou"] == 0.6
    assert not set(MODEL_FILE_KEYS) & set(data)
    assert from_dict(ModelConfig, data) == cfg  # the file's (0.1) names
    new_names = dict(data)
    for name, key in MODEL_FILE_KEYS.items():
        new_names[name] = new_names.pop(key)
    assert from_dict(ModelConfig, new_names) == cfg  # this release's names (a --config file's model: table)
    with pytest.raises(ConfigError, match="name one setting"):
        from_dict(ModelConfig, {"score_thresh": 0.1, "chip_score_threshold": 0.2})


def test_one_error_type_for_a_bad_assigner_wherever_it_is_given():
    import numpy as np

    from geodet.modeling.anchors import coverage_report, fit_assignment

    boxes = np.array([[0, 0, 10, 10], [5, 5, 30, 20]], np.float32)
    attempts = [
        lambda: check_assigner("hungarian"),
        lambda: ModelConfig(assigner="hungarian"),
        lambda: fit_assignment(boxes, assigner="hungarian"),
        lambda: coverage_report(boxes, None, assigner="hungarian"),
    ]
    for attempt in attempts:
        with pytest.raises(ConfigError, match="assigner must be one of atss, maxiou"):
            attempt()
    assert issubclass(ConfigError, GeodetError) and issubclass(ConfigError, ValueError)
    assert check_assigner("atss") == "atss"
