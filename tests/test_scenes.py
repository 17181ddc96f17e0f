"""One scene's detections and the run's frames: combining per-scene frames, the run's metadata.

End to end, a task's detections are pinned by tests/test_detection.py (one scene), tests/test_mosaic.py
(scenes of a mosaic) and tests/test_jobs.py (chip blocks kept in a job folder).
"""

import geopandas as gpd
import shapely

from geodet.inference.detector import with_metadata
from geodet.inference.scenes import COLUMNS, combine_frames, empty_frame, scene_name


def test_combine_frames_keeps_a_shared_run_metadata_only():
    meta = {"geodet_version": "0", "model_name": "m.pt", "model_hash": "0123456789abcdef", "class_names": ["a"]}

    def frame(crs, n, scene, metadata=meta):
        polys = [shapely.box(i, 0, i + 1, 1) for i in range(n)]
        data = {"class": ["a"] * n, "class_id": [0] * n, "score": [0.5] * n, "scene": [scene] * n}
        return with_metadata(gpd.GeoDataFrame(data, geometry=polys, crs=crs), metadata)

    both = combine_frames([frame("EPSG:32611", 2, "a.tif"), frame("EPSG:32612", 1, "b.tif")])
    assert both.attrs["geodet"] == meta and len(both) == 3 and both.crs.to_epsg() == 4326
    none_found = combine_frames([with_metadata(empty_frame("EPSG:32611"), meta)])
    assert none_found.attrs["geodet"] == meta and list(none_found.columns[:4]) == ["class", "class_id", "score", "scene"]
    other = dict(meta, model_hash="fedcba9876543210")
    assert "geodet" not in combine_frames([frame("EPSG:32611", 1, "a.tif"), frame("EPSG:32611", 1, "b.tif", other)]).attrs


def test_empty_frame_has_the_schema_and_the_scene_name_has_no_query():
    frame = empty_frame("EPSG:32611")
    assert list(frame.columns) == [*COLUMNS, "geometry"] and len(frame) == 0 and frame.crs.to_epsg() == 32611
    assert scene_name("/vsicurl/https://host/a/b.tif?sig=secret") == "b.tif"


def test_the_runner_interface_has_one_home():
    from geodet.inference import cluster, detection, jobs, scenes, tasks

    for module in (cluster, detection, scenes):
        assert module.Runner is tasks.Runner and module.SceneTask is tasks.SceneTask
    assert cluster.OnDone is tasks.OnDone and cluster.OnFailed is tasks.OnFailed and jobs.SceneTask is tasks.SceneTask
