"""Scene I/O: georeferencing checks, band statistics, chip reads."""

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.windows import Window

from geodet.errors import GeodetError
from geodet.io.raster import (
    gsd_metres,
    open_dataset,
    open_scene,
    parse_bands,
    pool_band_stats,
    read_chip,
    read_window,
    resolve_bands,
    sample_band_stats,
)


def _write(path, data, **profile):
    c, h, w = data.shape
    base = dict(driver="GTiff", width=w, height=h, count=c, dtype=data.dtype.name)
    base.update(profile)
    with rasterio.open(path, "w", **base) as dst:
        dst.write(data)
    return str(path)


def test_open_scene_metadata(make_scene_files):
    s = make_scene_files(200, 300, bands=4, dtype="uint16")
    info = open_scene(s.path)
    assert (info.height, info.width, info.count, info.dtype) == (200, 300, 4, "uint16")
    assert info.crs.to_epsg() == 32611
    assert info.gsd == pytest.approx(0.4)
    assert gsd_metres(info) == pytest.approx(0.4)


def test_no_crs_is_a_clear_error(tmp_path):
    path = _write(tmp_path / "nocrs.tif", np.zeros((1, 8, 8), np.uint8), transform=Affine(1, 0, 0, 0, -1, 8))
    with pytest.raises(GeodetError, match="has no CRS"):
        open_scene(path)


def test_no_geotransform_is_a_clear_error(tmp_path):
    path = _write(tmp_path / "plain.tif", np.zeros((1, 8, 8), np.uint8))
    with pytest.raises(GeodetError, match="no geotransform"):
        open_scene(path)


def test_corrupt_and_missing_files(tmp_path):
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"II*\x00 this is not a tiff")
    with pytest.raises(GeodetError, match="not a readable raster"):
        open_scene(str(bad))
    with pytest.raises(GeodetError, match="does not exist"):
        open_scene(str(tmp_path / "missing.tif"))


def test_band_parsing_and_selection(make_scene_files):
    assert parse_bands("1, 2,3") == (1, 2, 3)
    assert parse_bands(None) is None
    with pytest.raises(GeodetError):
        parse_bands("a,b")
    with pytest.raises(GeodetError):
        parse_bands("0,1")
    info = open_scene(make_scene_files(64, 64, bands=4).path)
    assert resolve_bands(info, None) == (1, 2, 3, 4)
    assert resolve_bands(info, (4, 3, 2)) == (4, 3, 2)
    with pytest.raises(GeodetError, match="has 4 band"):
        resolve_bands(info, (1, 5))


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32"])
def test_chips_are_normalised_per_band(make_scene_files, dtype):
    s = make_scene_files(300, 300, bands=3, dtype=dtype)
    with open_dataset(s.path) as src:
        stats = sample_band_stats(src, (1, 2, 3))
        chip, valid = read_chip(src, Window(0, 0, 300, 300), (1, 2, 3), stats, 300)
    assert chip.dtype == np.float32 and chip.shape == (3, 300, 300)
    assert valid.all()
    np.testing.assert_allclose(chip.reshape(3, -1).mean(1), 0, atol=0.1)
    np.testing.assert_allclose(chip.reshape(3, -1).std(1), 1, atol=0.15)


def test_uint16_four_bands_with_nodata(make_scene_files):
    s = make_scene_files(256, 256, bands=4, dtype="uint16", nodata_region=True)
    with open_dataset(s.path) as src:
        stats = sample_band_stats(src, (1, 2, 3, 4), window_px=64)
        data, valid = read_window(src, Window(0, 0, 256, 256), (1, 2, 3, 4))
        chip, chip_valid = read_chip(src, Window(0, 0, 256, 256), (1, 2, 3, 4), stats, 256)
    np.testing.assert_array_equal(valid, s.scene.valid)
    assert not valid.all() and valid.any()
    # statistics come from valid pixels only
    expect = data[:, valid].mean(axis=1)
    np.testing.assert_allclose(stats.mean, expect, rtol=0.05)
    assert np.all(chip[:, ~chip_valid] == 0)
    assert abs(float(chip[:, chip_valid].mean())) < 0.2


def test_small_scene_padded_to_chip(make_scene_files):
    s = make_scene_files(40, 70)
    with open_dataset(s.path) as src:
        stats = sample_band_stats(src, (1, 2, 3))
        chip, valid = read_chip(src, Window(0, 0, 70, 40), (1, 2, 3), stats, 128)
    assert chip.shape == (3, 128, 128)
    assert valid[:40, :70].all() and not valid[40:].any() and not valid[:, 70:].any()
    assert np.all(chip[:, 40:, :] == 0)


def test_striped_and_tiled_read_alike(make_scene_files):
    a = make_scene_files(200, 200, tiled=True, name="tiled")
    b = make_scene_files(200, 200, tiled=False, name="striped")
    w = Window(37, 51, 64, 64)
    with open_dataset(a.path) as sa, open_dataset(b.path) as sb:
        np.testing.assert_array_equal(read_window(sa, w, (1, 2, 3))[0], read_window(sb, w, (1, 2, 3))[0])


def test_resampled_read_has_out_shape(make_scene_files):
    s = make_scene_files(128, 128)
    with open_dataset(s.path) as src:
        stats = sample_band_stats(src, (1, 2, 3))
        chip, valid = read_chip(src, Window(0, 0, 128, 128), (1, 2, 3), stats, 64, out_shape=(64, 64))
    assert chip.shape == (3, 64, 64) and valid.all()


def test_pooled_stats_are_those_of_all_pixels(tmp_path):
    """Two scenes of different size and content pool to the mean/std of their pixels together."""
    rng = np.random.default_rng(0)
    a = rng.integers(0, 120, (2, 64, 64)).astype(np.uint8)
    b = rng.integers(80, 255, (2, 64, 160)).astype(np.uint8)
    stats = []
    for name, data in (("a.tif", a), ("b.tif", b)):
        with open_dataset(_write(tmp_path / name, data, crs="EPSG:32611", transform=Affine(1, 0, 0, 0, -1, 0))) as src:
            stats.append(sample_band_stats(src, (1, 2)))  # whole scenes: fewer windows than the sample
    assert [s.pixels for s in stats] == [64 * 64, 64 * 160]
    pooled = pool_band_stats(stats)
    together = np.concatenate([a.reshape(2, -1), b.reshape(2, -1)], axis=1).astype(np.float64)
    # float64 sums of < 2**15 integers below 2**8: relative error far below 1e-9
    np.testing.assert_allclose(pooled.mean, together.mean(axis=1), rtol=1e-9)
    np.testing.assert_allclose(pooled.std, together.std(axis=1), rtol=1e-9)
    assert pooled.pixels == together.shape[1]
    assert pool_band_stats(stats[:1]) is stats[0]  # one training scene: its statistics, unchanged
