"""geodet detect: streaming inference, stitching, georeferenced output."""

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from click.testing import CliRunner

from geodet.core.boxes import pixel_boxes_to_polygons
from geodet.config import DetectConfig
import geodet
from geodet.inference.detection import detect, write_detections
from geodet.inference.detector import default_model_path
from geodet.modeling.modelfile import model_hash
from geodet.errors import ConfigError, GeodetError
from geodet.inference.predict import plan_chips
from geodet.io.raster import open_scene
from geodet.io.formats import read_output_metadata
from geodet_cli.main import cli


def _truth_polygons(s, crs=None):
    polys = pixel_boxes_to_polygons(s.scene.boxes_px, s.transform)
    frame = gpd.GeoDataFrame(geometry=polys, crs=s.crs)
    return frame if crs is None else frame.to_crs(crs)


def _match_rate(dets, truth, iou=0.5):
    """Share of detections with IoU >= iou to some truth polygon (same CRS)."""
    if len(dets) == 0:
        return 0.0
    tree = shapely.STRtree(truth.geometry.values)
    hits = 0
    for g in dets.geometry.values:
        cand = tree.query(g)
        best = max((g.intersection(truth.geometry.values[c]).area / g.union(truth.geometry.values[c]).area
                    for c in cand), default=0.0)
        hits += best >= iou
    return hits / len(dets)


@pytest.fixture(scope="module")
def default_model():
    return default_model_path()


def test_detect_lands_on_objects(make_scene_files, default_model):
    s = make_scene_files(512, 512, seed=7)
    dets = detect(s.path, model=default_model, config=DetectConfig(score_threshold=0.5))
    assert list(dets.columns[:4]) == ["class", "class_id", "score", "scene"]
    assert dets["class_id"].dtype == np.int64
    names = dets.attrs["geodet"]["class_names"]
    assert (np.asarray(names, dtype=object)[dets["class_id"].to_numpy()] == dets["class"].to_numpy()).all()
    assert dets.attrs["geodet"]["model_name"] == "default.pt" and len(dets.attrs["geodet"]["model_hash"]) == 16
    assert dets.crs.to_epsg() == 32611
    assert len(dets) >= 0.8 * len(s.scene.boxes_px)
    assert _match_rate(dets, _truth_polygons(s)) > 0.9
    # each object once: no same-class pair with IoU > 0.5
    from torchvision.ops import box_iou
    import torch

    b = torch.tensor(dets.geometry.bounds.to_numpy())
    iou = box_iou(b, b).fill_diagonal_(0)
    assert int((iou > 0.5).sum()) == 0


def test_loaded_model_is_left_trainable(make_scene_files, default_model):
    """detect() folds batch norms into a copy: the caller's model keeps its layers and its outputs."""
    from torch import nn
    from torchvision.ops import FrozenBatchNorm2d

    from geodet.modeling.modelfile import load_model

    def count_norms(net):
        return sum(isinstance(m, (FrozenBatchNorm2d, nn.BatchNorm2d)) for m in net.modules())

    s = make_scene_files(256, 256, seed=3)
    net, meta = load_model(default_model)
    norms = count_norms(net)
    from_pair = detect(s.path, model=(net, meta), config=DetectConfig(score_threshold=0.3))
    assert count_norms(net) == norms > 0
    from_file = detect(s.path, model=default_model, config=DetectConfig(score_threshold=0.3))
    assert len(from_pair) == len(from_file) > 0
    np.testing.assert_allclose(from_pair.score.to_numpy(), from_file.score.to_numpy(), atol=1e-4)


def test_nodata_chips_skip_the_network(make_scene_files, default_model):
    """Chips with no valid pixel never reach the model; no detection is centred on nodata."""
    from geodet.inference.detector import config_for_model, load
    from geodet.inference.predict import plan_scene, predict_scene
    from geodet.io.raster import open_dataset, scene_info

    s = make_scene_files(256, 1024, seed=4, nodata_region=True)  # about the right 35% is nodata
    net, meta, device = load(default_model, "cpu")
    calls = []
    net.register_forward_pre_hook(lambda _m, args: calls.append(len(args[0])))
    config = config_for_model(DetectConfig(chip_size=128, overlap=32, score_threshold=0.3), meta)
    with open_dataset(s.path) as src:
        plan = plan_scene(src, scene_info(src), config, meta)
        dets = predict_scene(net, src, plan, config, device=device)
        assert not src.closed  # the caller's handle: read through, left open
    assert dets.skipped >= 2 and sum(calls) == dets.chips  # only chips with data went through the network
    assert len(dets.scores) > 0
    cx = ((dets.boxes_px[:, 0] + dets.boxes_px[:, 2]) / 2).astype(int)
    cy = ((dets.boxes_px[:, 1] + dets.boxes_px[:, 3]) / 2).astype(int)
    assert s.scene.valid[cy, cx].all()


def test_precision_choice():
    import torch

    from geodet.modeling.device import autocast_dtype, cpu_has_native_bf16

    cpu = torch.device("cpu")
    assert autocast_dtype(cpu, "float32") is None
    assert autocast_dtype(cpu, "bfloat16") is torch.bfloat16
    assert autocast_dtype(cpu, "float16") is torch.float16
    assert autocast_dtype(cpu, "auto") is (torch.bfloat16 if cpu_has_native_bf16() else None)
    with pytest.raises(ValueError, match="precision"):
        DetectConfig(precision="int8")


@pytest.mark.parametrize("precision", ["bfloat16", "float16"])
def test_half_precision_finds_what_float32_finds(make_scene_files, default_model, precision):
    from torchvision.ops import box_iou
    import torch

    s = make_scene_files(512, 512, seed=11)
    full = detect(s.path, model=default_model, config=DetectConfig(score_threshold=0.5, precision="float32"))
    half = detect(s.path, model=default_model, config=DetectConfig(score_threshold=0.5, precision=precision))
    assert abs(len(half) - len(full)) <= max(1, len(full) // 50)
    a = torch.tensor(full.geometry.bounds.to_numpy())
    b = torch.tensor(half.geometry.bounds.to_numpy())
    best = box_iou(a, b).max(dim=1).values
    assert float(best.median()) > 0.95 and float((best > 0.7).float().mean()) > 0.97


@pytest.mark.parametrize("ext,epsg", [(".geojson", 4326), (".gpkg", 32611), (".shp", 32611), (".parquet", 32611)])
def test_output_formats(make_scene_files, default_model, tmp_path, ext, epsg):
    s = make_scene_files(256, 256, seed=3)
    out = tmp_path / f"d{ext}"
    precision = "float32" if ext == ".gpkg" else "auto"
    res = CliRunner().invoke(cli, ["detect", s.path, "-o", str(out), "-m", default_model, "--quiet",
                                   "--precision", precision])
    assert res.exit_code == 0, res.output
    back = gpd.read_parquet(out) if ext == ".parquet" else gpd.read_file(out)
    assert back.crs.to_epsg() == epsg
    assert {"class", "class_id", "score", "scene"} <= set(back.columns) and len(back) > 0
    assert _match_rate(back, _truth_polygons(s, back.crs)) > 0.85
    meta = read_output_metadata(out)
    if ext == ".shp":
        assert meta is None  # a shapefile has no place for it
    else:
        assert meta["model_name"] == "default.pt" and meta["model_hash"] == model_hash(default_model)
        assert meta["geodet_version"] == geodet.__version__
        assert list(back["class"]) == [meta["class_names"][i] for i in back["class_id"]]
    if ext == ".geojson":
        lon, lat = back.geometry.iloc[0].exterior.coords[0]
        assert -180 <= lon <= 180 and -90 <= lat <= 90
    res = CliRunner().invoke(cli, ["detect", s.path, "-o", str(out), "-m", default_model])
    assert res.exit_code != 0 and "already exists" in res.output


def test_rotated_scene(make_scene_files, default_model):
    s = make_scene_files(384, 384, seed=5, rotation_deg=30.0)
    dets = detect(s.path, model=default_model, config=DetectConfig(score_threshold=0.5))
    assert len(dets) > 0
    # the output polygons are rotated parallelograms mapped through the affine
    assert _match_rate(dets, _truth_polygons(s)) > 0.85


def test_empty_scene_gives_valid_empty_file(tmp_path, default_model):
    path = tmp_path / "empty.tif"
    with rasterio.open(path, "w", driver="GTiff", width=300, height=300, count=3, dtype="uint8",
                       crs="EPSG:32611", transform=rasterio.Affine(0.4, 0, 500000, 0, -0.4, 3760000)) as dst:
        dst.write(np.full((3, 300, 300), 90, np.uint8))
    dets = detect(str(path), model=default_model)
    assert len(dets) == 0 and dets.crs.to_epsg() == 32611
    out = tmp_path / "none.geojson"
    write_detections(dets, str(out))
    back = gpd.read_file(out)
    assert len(back) == 0


def test_resampled_scene(make_scene_files, default_model):
    # pixels twice as fine as the model's: read at the model's pixel size
    s = make_scene_files(768, 768, seed=11, pixel_size=0.2, object_size_px=(16, 60))
    info = open_scene(s.path)
    plan = plan_chips(info, 256, 64, 0.2, 0.4)
    assert plan.scale == pytest.approx(2.0)
    dets = detect(s.path, model=default_model, config=DetectConfig(score_threshold=0.5))
    assert len(dets) > 0
    assert _match_rate(dets, _truth_polygons(s)) > 0.8


def test_several_scenes_one_output(make_scene_files, default_model):
    a = make_scene_files(256, 256, seed=1, name="a")
    b = make_scene_files(256, 256, seed=2, name="b", crs="EPSG:32610")
    dets = detect([a.path, b.path], model=default_model)
    assert set(dets["scene"]) == {"a.tif", "b.tif"}
    assert dets.crs.to_epsg() == 4326  # different CRSs -> lon/lat


def test_a_bad_on_error_is_a_config_error_before_any_work(make_scene_files, default_model):
    """A bad setting of the API is a ConfigError, as every other bad setting (issue 29)."""
    s = make_scene_files(64, 64, seed=3)
    with pytest.raises(ConfigError, match="on_error must be 'raise' or 'skip', got 'ignore'"):
        detect(s.path, model=default_model, on_error="ignore")


def test_band_mismatch_is_clear(make_scene_files, default_model):
    s = make_scene_files(128, 128, bands=1)
    with pytest.raises(GeodetError, match="expects 3 band"):
        detect(s.path, model=default_model)


def test_wrong_band_count_is_refused(make_scene_files, default_model, tmp_path):
    """The 3-band model fed 2 bands (API) or 4 bands (CLI): one sentence, no traceback."""
    three = make_scene_files(128, 128, bands=3, name="three")
    with pytest.raises(GeodetError) as info:
        detect(three.path, model=default_model, bands=(1, 2))
    assert str(info.value) == (
        f"the model expects 3 band(s) but 2 were chosen for {three.path} (1, 2); pick 3 with --bands."
    )
    four = make_scene_files(128, 128, bands=4, name="four")
    res = CliRunner().invoke(cli, ["detect", four.path, "-o", str(tmp_path / "d.geojson"), "-m", default_model,
                                   "--bands", "1,2,3,4", "--quiet"])
    assert res.exit_code != 0
    assert "expects 3 band(s) but 4 were chosen" in res.output and "Traceback" not in res.output


def test_model_normalisation_is_the_default(make_scene_files, default_model):
    """Chips of a scene of the model's pixel type are normalised with the model file's statistics
    (``auto``, the default) unless the scene's are asked for."""
    from geodet.inference.detector import config_for_model, load
    from geodet.inference.predict import plan_scene
    from geodet.io.raster import open_dataset, sample_band_stats, scene_info

    s = make_scene_files(256, 256, seed=3)
    _net, meta, _dev = load(default_model, "cpu")
    assert DetectConfig().normalisation == "auto" and np.dtype(meta.dtype) == np.uint8
    with open_dataset(s.path) as src:
        info = scene_info(src)
        by_model = plan_scene(src, info, config_for_model(DetectConfig(), meta), meta)
        by_scene = plan_scene(src, info, config_for_model(DetectConfig(normalisation="scene"), meta), meta)
        sampled = sample_band_stats(src, meta.bands)
    assert by_model.stats.mean == meta.band_mean and by_model.stats.std == meta.band_std
    assert by_scene.stats == sampled and by_scene.stats.mean != meta.band_mean
    with pytest.raises(ValueError, match="normalisation"):
        DetectConfig(normalisation="imagenet")


def test_scene_dtype_unlike_the_models_warns(make_scene_files, default_model, caplog):
    """A uint16 scene under a uint8 model's statistics, asked for with --normalisation model: a
    warning that points at --normalisation scene (the default, auto, takes the scene's own)."""
    s = make_scene_files(128, 128, seed=3, dtype="uint16")
    with caplog.at_level("WARNING", logger="geodet.inference.predict"):
        detect(s.path, model=default_model)
    assert not any("--normalisation scene" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level("WARNING", logger="geodet.inference.predict"):
        detect(s.path, model=default_model, config=DetectConfig(normalisation="model"))
    assert any("uint16" in r.getMessage() and "--normalisation scene" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level("WARNING", logger="geodet.inference.predict"):
        detect(s.path, model=default_model, config=DetectConfig(normalisation="scene"))
    assert not any("--normalisation scene" in r.getMessage() for r in caplog.records)


def test_seam_objects_reported_once(tmp_path, default_model):
    """A pool straddling the seam of 2 chips and one at a 4-chip corner: one box each."""
    from geodet.testing import synthetic

    scene = synthetic.make_scene(448, 448, seed=21, density=0.0)
    img = scene.image
    pools = [(185, 60, 207, 78), (180, 180, 204, 200)]  # chip 256 / overlap 64: seams at 192..256
    for x1, y1, x2, y2 in pools:
        img[:, y1 - 2:y2 + 2, x1 - 2:x2 + 2] = np.array([225, 235, 235], np.uint8)[:, None, None]
        img[:, y1:y2, x1:x2] = np.array([40, 170, 215], np.uint8)[:, None, None]
    path = tmp_path / "seam.tif"
    transform = synthetic.write_scene(path, scene)
    dets = detect(str(path), model=default_model, config=DetectConfig(score_threshold=0.4, overlap=64),
                  chip_size=256)
    truth = gpd.GeoDataFrame(geometry=pixel_boxes_to_polygons(np.array(pools, float), transform), crs="EPSG:32611")
    for poly in truth.geometry:
        hits = dets[dets.intersects(poly)]
        assert len(hits) == 1, f"{len(hits)} boxes on one pool"


def _copy_as(src_path, dst_path, dtype, *, scale=1.0, nodata=None, nodata_block=None):
    """A copy of a scene in another pixel type (values times ``scale``), optionally with a
    ``nodata`` value written over the pixel block ``(row0, row1, col0, col1)``."""
    with rasterio.open(src_path) as src:
        data = src.read().astype(np.float64) * scale
        profile = src.profile.copy()
    if nodata_block is not None:
        r0, r1, c0, c1 = nodata_block
        data[:, r0:r1, c0:c1] = nodata
    profile.update(dtype=dtype, nodata=nodata)
    with rasterio.open(dst_path, "w", **profile) as dst:
        dst.write(data.astype(dtype))
    return str(dst_path)


def _matched_share(a, b, iou=0.5):
    """Share of the boxes of frame ``a`` that have a box of ``b`` at IoU >= ``iou`` (same CRS)."""
    from torchvision.ops import box_iou
    import torch

    if len(a) == 0 or len(b) == 0:
        return float(len(a) == len(b))
    ious = box_iou(torch.tensor(a.geometry.bounds.to_numpy()), torch.tensor(b.geometry.bounds.to_numpy()))
    return float((ious.max(dim=1).values >= iou).float().mean())


def test_a_uint8_model_works_on_uint16_and_float_copies(tmp_path, make_scene_files, default_model):
    """A model trained on uint8 imagery, run on the same scene stored as uint16 (values x 257) or as
    float32 with NaN nodata, finds what it finds in uint8: by default ("auto") such a scene is
    normalised by its own statistics, which undo any linear rescaling of its values.

    Tolerances: the uint16 copy's statistics are 257x the uint8 scene's to float64 rounding, so its
    chips equal the uint8 scene-normalised chips to float32 rounding and the detections agree to
    1e-4 in score. The NaN block changes the sampled statistics slightly and removes the objects under
    it, so that copy is held to the same objects (IoU >= 0.5) outside the block instead.
    """
    s = make_scene_files(512, 512, seed=11)
    as_uint16 = _copy_as(s.path, tmp_path / "u16.tif", "uint16", scale=257.0)
    block = (0, 96, 0, 96)
    as_float = _copy_as(s.path, tmp_path / "f32.tif", "float32", nodata=np.nan, nodata_block=block)
    cfg = DetectConfig(score_threshold=0.3)
    uint8_model = detect(s.path, model=default_model, config=cfg)
    uint8_scene = detect(s.path, model=default_model, config=DetectConfig(score_threshold=0.3, normalisation="scene"))
    u16 = detect(as_uint16, model=default_model, config=cfg)
    f32 = detect(as_float, model=default_model, config=cfg)
    assert len(uint8_model) >= 0.8 * len(s.scene.boxes_px)
    # uint16: exactly the uint8 scene-normalised run
    assert len(u16) == len(uint8_scene)
    np.testing.assert_allclose(np.sort(u16["score"].to_numpy()), np.sort(uint8_scene["score"].to_numpy()), atol=1e-4)
    assert _matched_share(u16, uint8_scene) == 1.0
    # and the same objects as the uint8 run with the model's statistics
    assert _matched_share(u16, uint8_model) >= 0.95 and _matched_share(uint8_model, u16) >= 0.95
    # float32 with NaN nodata: the same objects outside the nodata block
    with rasterio.open(s.path) as src:
        x0, y0 = src.transform * (block[3], block[1])  # the block's bottom-right corner in world units
    outside = lambda f: f[~((f.geometry.bounds["minx"] < x0) & (f.geometry.bounds["maxy"] > y0))]  # noqa: E731
    assert _matched_share(outside(f32), outside(uint8_model)) >= 0.95
    assert _matched_share(outside(uint8_model), outside(f32)) >= 0.95


def test_auto_normalisation_keeps_the_models_statistics_for_its_own_pixel_type(make_scene_files, default_model):
    s = make_scene_files(256, 256, seed=12)
    auto = detect(s.path, model=default_model, config=DetectConfig(score_threshold=0.3))
    model = detect(s.path, model=default_model, config=DetectConfig(score_threshold=0.3, normalisation="model"))
    np.testing.assert_array_equal(auto["score"].to_numpy(), model["score"].to_numpy())
