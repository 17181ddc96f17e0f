"""The synthetic scene generator: determinism, labels, bands, nodata, GeoTIFF and label files."""

import warnings

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from affine import Affine

from geodet.core.boxes import world_to_pixel_points
from geodet.errors import GeodetError
from geodet.testing.synthetic import SceneParams, draw_params, label_frame, make_scene, write_labels, write_scene

CRS = "EPSG:32611"


@pytest.fixture(scope="module")
def easy():
    return make_scene(1024, 1024, seed=0)


@pytest.fixture(scope="module")
def hard():
    return make_scene(512, 512, seed=1, difficulty="hard")


def _to_pixel(geoms, transform):
    """World geometries -> pixel space through the inverse affine."""
    return shapely.transform(np.asarray(geoms), lambda xy: world_to_pixel_points(xy, transform))


def _overlap_area(a, b):
    """Pairwise intersection areas of xyxy boxes a [N, 4] and b [M, 4]."""
    w = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    h = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    return np.clip(w, 0, None) * np.clip(h, 0, None)


# ----------------------------------------------------------------------------- determinism
@pytest.mark.parametrize("difficulty", ["easy", "hard"])
def test_same_seed_gives_identical_scene(difficulty):
    a = make_scene(256, 320, seed=7, difficulty=difficulty)
    b = make_scene(256, 320, seed=7, difficulty=difficulty)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.boxes_px, b.boxes_px)
    np.testing.assert_array_equal(a.classes, b.classes)
    c = make_scene(256, 320, seed=8, difficulty=difficulty)
    assert not np.array_equal(a.image, c.image)


def test_rgb_does_not_depend_on_band_count():
    rgb = make_scene(200, 200, seed=3, difficulty="hard")
    rgbn = make_scene(200, 200, seed=3, difficulty="hard", bands=4)
    np.testing.assert_array_equal(rgbn.image[:3], rgb.image)
    np.testing.assert_array_equal(rgbn.boxes_px, rgb.boxes_px)


# ----------------------------------------------------------------------------- labels
def test_easy_density_and_classes(easy):
    assert easy.image.shape == (3, 1024, 1024) and easy.image.dtype == np.uint8
    assert 150 <= len(easy.boxes_px) <= 250
    assert set(easy.classes) == {"pool"}
    assert len(easy.distractors_px) > 0  # blue roofs
    assert not easy.occluded.any()
    sparse = make_scene(512, 512, seed=0, density=0.3)
    dense = make_scene(512, 512, seed=0, density=1.0)
    assert len(sparse.boxes_px) < 0.6 * len(dense.boxes_px)


def test_small_scenes_hold_objects():
    """A scene smaller than a block is placed over back yards, so it is never empty."""
    for seed in range(4):
        assert len(make_scene(96, 128, seed=seed).boxes_px) >= 2


@pytest.mark.parametrize("which", ["easy", "hard"])
def test_boxes_inside_scene_and_not_overlapping(which, request):
    scene = request.getfixturevalue(which)
    b = scene.boxes_px
    assert b.dtype == np.float64 and b.shape == (len(scene.classes), 4) == (len(scene.polygons_px), 4)
    assert (b[:, 0] >= 0).all() and (b[:, 1] >= 0).all()
    assert (b[:, 2] <= scene.width).all() and (b[:, 3] <= scene.height).all()
    assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
    overlap = _overlap_area(b, b)
    np.fill_diagonal(overlap, 0)
    assert overlap.max() == 0  # no two objects (pools, cars) overlap
    np.testing.assert_array_equal(np.array([p.bounds for p in scene.polygons_px]), b)


def test_pool_sizes_follow_object_size(easy, hard):
    for scene, (lo, hi) in ((easy, (8, 30)), (hard, (6, 20))):
        pools = scene.boxes_px[scene.classes == "pool"]
        w, h = pools[:, 2] - pools[:, 0], pools[:, 3] - pools[:, 1]
        assert w.min() >= lo - 1e-9 and h.min() >= lo - 1e-9
        assert w.max() <= hi + 1e-9 and h.max() <= hi + 1e-9
        assert (w / h).min() >= 0.5 - 1e-9 and (w / h).max() <= 2 + 1e-9
    big = make_scene(300, 300, seed=2, object_size_px=(20, 40))
    sides = np.concatenate([big.boxes_px[:, 2] - big.boxes_px[:, 0], big.boxes_px[:, 3] - big.boxes_px[:, 1]])
    assert len(big.boxes_px) and sides.min() >= 20 - 1e-9 and sides.max() <= 40 + 1e-9


def test_boxes_sit_on_the_drawn_pools(easy):
    """Water at the centre, light rim just inside each side, untouched ground just outside."""
    img = easy.image.astype(int)
    H, W = easy.height, easy.width
    for (x0, y0, x1, y1), poly in zip(easy.boxes_px, easy.polygons_px):
        cx, cy = int((x0 + x1) / 2), int((y0 + y1) / 2)
        r, g, b = img[:, cy, cx]
        assert b > r + 60, "pool centre is not water"
        c0, r0, c1, r1 = int(np.floor(x0)), int(np.floor(y0)), int(np.ceil(x1)), int(np.ceil(y1))
        ring = np.concatenate(
            [
                img[:, max(r0 - 1, 0), c0:c1],
                img[:, min(r1, H - 1), c0:c1],
                img[:, r0:r1, max(c0 - 1, 0)],
                img[:, r0:r1, min(c1, W - 1)],
            ],
            axis=1,
        )
        assert not ((ring[2] > ring[0] + 60) | (ring.min(axis=0) > 200)).any(), "pool pixels outside its box"
        if len(poly.exterior.coords) == 5:  # rectangle: a light rim lies along each side, inside the box
            centre = img[:, cy, cx].min()
            f, g = int(np.floor(x0)), int(np.ceil(x1)) - 1
            t, u = int(np.floor(y0)), int(np.ceil(y1)) - 1
            sides = [  # (two pixels just inside the side, the pixel just outside)
                ((img[:, cy, f], img[:, cy, f + 1]), img[:, cy, f - 1]),
                ((img[:, cy, g], img[:, cy, g - 1]), img[:, cy, g + 1]),
                ((img[:, t, cx], img[:, t + 1, cx]), img[:, t - 1, cx]),
                ((img[:, u, cx], img[:, u - 1, cx]), img[:, u + 1, cx]),
            ]
            for inside, outside in sides:
                assert max(p.min() for p in inside) > max(outside.min(), centre) + 20, "no rim at the box edge"


def test_hard_scene_content(hard):
    assert set(hard.classes) == {"pool", "car"}
    pools = hard.classes == "pool"
    assert 0.2 <= hard.occluded[pools].mean() <= 0.5  # about a third under tree crowns
    assert not hard.occluded[~pools].any()
    assert len(hard.distractors_px) > 0  # tarps, blue roofs
    cars = hard.boxes_px[~pools]
    w, h = cars[:, 2] - cars[:, 0], cars[:, 3] - cars[:, 1]
    short, long = np.minimum(w, h), np.maximum(w, h)
    assert short.min() >= 4.3 and short.max() <= 5.5 and long.min() >= 8.9 and long.max() <= 11.1
    assert (w > h).any() and (h > w).any()  # both orientations
    # dense rows: many cars have a neighbour 0.5-1 px away along their long side
    gx = np.maximum(cars[None, :, 0] - cars[:, None, 2], cars[:, None, 0] - cars[None, :, 2])
    gy = np.maximum(cars[None, :, 1] - cars[:, None, 3], cars[:, None, 1] - cars[None, :, 3])
    touching = ((gx >= 0.49) & (gx <= 1.01) & (gy < 0)) | ((gy >= 0.49) & (gy <= 1.01) & (gx < 0))
    assert touching.any(axis=1).mean() > 0.3


# ----------------------------------------------------------------------------- bands, dtypes, nodata
@pytest.mark.parametrize(
    "bands, dtype, lo, hi",
    [(1, "uint8", 1, 255), (3, "uint16", 40, 4040), (4, "float32", 0.0, 1.0), (6, "uint8", 1, 255), (2, "uint16", 40, 4040)],
)
def test_bands_and_dtypes(bands, dtype, lo, hi):
    scene = make_scene(128, 160, seed=4, bands=bands, dtype=dtype)
    assert scene.image.shape == (bands, 128, 160) and scene.image.dtype == np.dtype(dtype)
    assert scene.image.min() >= lo and scene.image.max() <= hi
    assert len(scene.band_names) == bands and scene.nodata is None and scene.valid.all()


def test_nir_bright_vegetation_dark_water():
    scene = make_scene(512, 512, seed=0, bands=4, dtype="float32")
    red, nir = scene.image[0], scene.image[3]
    centres = ((scene.boxes_px[:, :2] + scene.boxes_px[:, 2:]) / 2).astype(int)
    water_nir = nir[centres[:, 1], centres[:, 0]]
    assert np.median(water_nir) < 0.1 < 0.4 < np.median(nir)  # grass dominates the scene
    assert (water_nir < red[centres[:, 1], centres[:, 0]]).all()


@pytest.mark.parametrize("dtype, nodata_value", [("uint8", None), ("uint16", None), ("float32", None), ("float32", -9999.0)])
def test_nodata_region(dtype, nodata_value):
    plain = make_scene(300, 400, seed=5, dtype=dtype, difficulty="hard")
    scene = make_scene(300, 400, seed=5, dtype=dtype, difficulty="hard", nodata_region=True, nodata_value=nodata_value)
    assert 0.55 <= scene.valid.mean() <= 0.75 and not scene.valid[:, -1].any() and scene.valid[:, 0].all()
    inside = scene.image[:, ~scene.valid]
    if dtype == "float32" and nodata_value is None:
        assert np.isnan(scene.nodata) and np.isnan(inside).all()
    else:
        expected = 0 if nodata_value is None else nodata_value
        assert scene.nodata == expected and (inside == expected).all()
        assert (scene.image[:, scene.valid] != expected).all()
    assert not np.isnan(scene.image[:, scene.valid]).any()
    # objects touching the region are removed; the others are the plain scene's objects
    for x0, y0, x1, y1 in scene.boxes_px:
        assert scene.valid[int(y0) : int(np.ceil(y1)), int(x0) : int(np.ceil(x1))].all()
    kept = {tuple(b) for b in plain.boxes_px}
    assert {tuple(b) for b in scene.boxes_px} <= kept and len(scene.boxes_px) < len(plain.boxes_px)


def test_bad_arguments_raise_geodet_error():
    for kwargs in (
        dict(bands=0),
        dict(dtype="int8"),
        dict(difficulty="medium"),
        dict(object_size_px=(10, 5)),
        dict(density=-1),
    ):
        with pytest.raises(GeodetError):
            make_scene(64, 64, **kwargs)
    with pytest.raises(GeodetError):
        make_scene(0, 64)


# ----------------------------------------------------------------------------- files
@pytest.mark.parametrize("rotation_deg", [0.0, 17.0], ids=["north-up", "rotated"])
def test_geotiff_and_geojson_round_trip(tmp_path, rotation_deg):
    scene = make_scene(300, 260, seed=3, difficulty="hard")
    tif, labels = tmp_path / "scene.tif", tmp_path / "labels.geojson"
    transform = write_scene(tif, scene, crs=CRS, rotation_deg=rotation_deg)
    write_labels(labels, scene, transform, CRS)
    with rasterio.open(tif) as ds:
        assert ds.transform.almost_equals(transform) and ds.crs.to_epsg() == 32611
        assert ds.block_shapes[0] == (256, 256) and ds.profile["compress"] == "deflate"
        assert ds.nodata is None and ds.descriptions == ("red", "green", "blue")
        np.testing.assert_array_equal(ds.read(), scene.image)
    if rotation_deg == 0:
        assert transform == Affine(0.4, 0, 500000.0, 0, -0.4, 3760000.0)
    frame = gpd.read_file(labels)
    assert frame.crs.to_epsg() == 4326
    assert list(frame["class"]) == list(scene.classes)
    boxes = shapely.bounds(_to_pixel(frame.to_crs(CRS).geometry.values, transform))
    np.testing.assert_allclose(boxes, scene.boxes_px, atol=1e-6, rtol=0)


def test_point_labels_are_box_centres(tmp_path):
    scene = make_scene(256, 256, seed=1)
    transform = write_scene(tmp_path / "s.tif", scene, rotation_deg=-30.0)
    path = tmp_path / "points.gpkg"
    write_labels(path, scene, transform, CRS, kind="point", class_field="label")
    frame = gpd.read_file(path).to_crs(CRS)
    assert (frame.geom_type == "Point").all() and list(frame["label"]) == list(scene.classes)
    xy = shapely.get_coordinates(_to_pixel(frame.geometry.values, transform))
    centres = (scene.boxes_px[:, :2] + scene.boxes_px[:, 2:]) / 2
    np.testing.assert_allclose(xy, centres, atol=1e-6, rtol=0)


def test_label_frame_options(tmp_path):
    scene = make_scene(200, 200, seed=0)
    transform = write_scene(tmp_path / "s.tif", scene)
    same_crs = label_frame(scene, transform, CRS, to_crs=None, class_field=None)
    assert list(same_crs.columns) == ["geometry"] and same_crs.crs.to_epsg() == 32611
    np.testing.assert_allclose(shapely.bounds(_to_pixel(same_crs.geometry.values, transform)), scene.boxes_px, atol=1e-9)
    write_labels(tmp_path / "pools.shp", scene, transform, CRS)
    assert len(gpd.read_file(tmp_path / "pools.shp")) == len(scene.boxes_px)
    with pytest.raises(GeodetError):
        write_labels(tmp_path / "pools.txt", scene, transform, CRS)
    with pytest.raises(GeodetError):
        label_frame(scene, transform, None)
    with pytest.raises(GeodetError):
        label_frame(scene, transform, CRS, kind="box")


def test_write_scene_variants(tmp_path):
    scene = make_scene(100, 120, seed=0, bands=4, dtype="float32", nodata_region=True)
    write_scene(tmp_path / "striped.tif", scene, tiled=False, compress=None)
    with rasterio.open(tmp_path / "striped.tif") as ds:
        assert not ds.profile.get("tiled", False) and ds.block_shapes[0][1] == 120
        assert ds.count == 4 and ds.dtypes[0] == "float32" and np.isnan(ds.nodata)
        assert np.isnan(ds.read(1)[~scene.valid]).all()
    write_scene(tmp_path / "no_crs.tif", scene, crs=None)
    with rasterio.open(tmp_path / "no_crs.tif") as ds:
        assert ds.crs is None and ds.transform.e == -0.4
    assert write_scene(tmp_path / "bare.tif", scene, crs=None, origin=None) == Affine.identity()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(tmp_path / "bare.tif") as ds:
            assert ds.crs is None and ds.transform == Affine.identity()
    explicit = Affine(2.0, 0, 10.0, 0, -2.0, 20.0)
    assert write_scene(tmp_path / "explicit.tif", scene, transform=explicit) == explicit
    with pytest.raises(GeodetError):
        write_scene(tmp_path / "bad.tif", scene, blocksize=100)


# ----------------------------------------------------------------------------- drawn parameters
def test_default_params_give_the_fixed_settings():
    for difficulty in ("easy", "hard"):
        fixed = make_scene(200, 240, seed=6, difficulty=difficulty)
        via = make_scene(200, 240, seed=6, params=SceneParams(difficulty=difficulty))
        np.testing.assert_array_equal(fixed.image, via.image)
        np.testing.assert_array_equal(fixed.boxes_px, via.boxes_px)


def test_draw_params_deterministic_per_seed():
    for setting in ("easy", "hard"):
        assert draw_params(3, setting) == draw_params(3, setting)
        assert draw_params(3, setting) != draw_params(4, setting)
    assert draw_params(3, "easy").difficulty == "easy" and draw_params(3, "hard").difficulty == "hard"
    with pytest.raises(GeodetError):
        draw_params(0, "medium")


def test_draw_params_within_ranges():
    draws = [draw_params(seed, "hard") for seed in range(60)]
    for p in draws:
        p.check()
        assert 6 <= p.pool_size_px[0] <= p.pool_size_px[1] <= 24
        assert 4 <= p.car_width_px[0] <= p.car_width_px[1] <= 7
        assert 8 <= p.car_length_px[0] <= p.car_length_px[1] <= 14
        assert 0.10 <= p.rare_share <= 0.15 and p.rare_class in ("pool", "car")
        assert 0.1 <= p.car_vertical_share <= 0.9 and 0.55 <= p.contrast <= 1 and 0.6 <= p.density <= 1.4
        assert 0.4 <= p.blur_sigma_px[0] <= 1.0 and 0.008 <= p.noise <= 0.025
    assert {p.rare_class for p in draws} == {"pool", "car"}
    assert len({p.pool_size_px for p in draws}) == len(draws)  # parameters really vary with the seed
    for seed in range(20):
        p = draw_params(seed, "easy")
        assert 8 <= p.pool_size_px[0] <= p.pool_size_px[1] <= 30 and p.rare_class is None


@pytest.mark.parametrize("seed", [0, 3])  # seed 0 draws rare pools, seed 3 rare cars
def test_drawn_scene_follows_its_params(seed):
    p = draw_params(seed, "hard")
    scene = make_scene(512, 512, seed=seed, params=p)
    assert set(scene.classes) == {"pool", "car"}
    n = len(scene.classes)
    share = (scene.classes == p.rare_class).mean()
    assert abs(share - p.rare_share) <= 0.5 / n + 1e-9 and 0.095 <= share <= 0.155
    pools, cars = scene.boxes_px[scene.classes == "pool"], scene.boxes_px[scene.classes == "car"]
    sides = np.concatenate([pools[:, 2] - pools[:, 0], pools[:, 3] - pools[:, 1]])
    assert sides.min() >= p.pool_size_px[0] - 1e-9 and sides.max() <= p.pool_size_px[1] + 1e-9
    w, h = cars[:, 2] - cars[:, 0], cars[:, 3] - cars[:, 1]
    short, long = np.minimum(w, h), np.maximum(w, h)
    assert short.min() >= p.car_width_px[0] - 1e-9 and short.max() <= p.car_width_px[1] + 1e-9
    assert long.min() >= p.car_length_px[0] - 1e-9 and long.max() <= p.car_length_px[1] + 1e-9
    overlap = _overlap_area(scene.boxes_px, scene.boxes_px)
    np.fill_diagonal(overlap, 0)
    assert overlap.max() == 0
    again = make_scene(512, 512, seed=seed, params=p)
    np.testing.assert_array_equal(again.image, scene.image)


def test_drawn_orientation_mix():
    """Most cars end up with the drawn orientation (a turned car that would collide is dropped)."""
    from dataclasses import replace

    base = draw_params(1, "hard")
    for share in (0.15, 0.85):
        scene = make_scene(512, 512, seed=1, params=replace(base, car_vertical_share=share, rare_class=None))
        cars = scene.boxes_px[scene.classes == "car"]
        vertical = ((cars[:, 3] - cars[:, 1]) > (cars[:, 2] - cars[:, 0])).mean()
        assert abs(vertical - share) < 0.2


def test_drawn_easy_labels_match_pixels():
    """Water at each box centre and no water just outside it, as in the fixed easy setting."""
    p = draw_params(2, "easy")
    scene = make_scene(512, 512, seed=2, params=p)
    img = scene.image.astype(int)
    H, W = scene.height, scene.width
    assert len(scene.boxes_px) > 20
    for x0, y0, x1, y1 in scene.boxes_px:
        r, _, b = img[:, int((y0 + y1) / 2), int((x0 + x1) / 2)]
        assert b > r + 60, "pool centre is not water"
        c0, r0, c1, r1 = int(np.floor(x0)), int(np.floor(y0)), int(np.ceil(x1)), int(np.ceil(y1))
        ring = np.concatenate(
            [img[:, max(r0 - 1, 0), c0:c1], img[:, min(r1, H - 1), c0:c1],
             img[:, r0:r1, max(c0 - 1, 0)], img[:, r0:r1, min(c1, W - 1)]],
            axis=1,
        )
        assert not (ring[2] > ring[0] + 60).any(), "pool pixels outside its box"


def test_drawn_hard_car_labels_match_pixels():
    """Each car box holds a car drawn along its long side: dark windscreen at 22-36 % of its length.

    Haze, noise and gradient are off and blur is slight, so pixels show the drawing. A box with
    the wrong orientation or position would put the windscreen sample on body or ground.
    """
    from dataclasses import replace

    p = replace(draw_params(4, "hard"), noise=0.0, haze=(0.0, 0.0), gradient=0.0, blur_sigma_px=(0.25, 0.25),
                contrast=1.0)
    scene = make_scene(512, 512, seed=4, params=p)
    lum = scene.image.astype(float).sum(axis=0)
    darker = []
    for x0, y0, x1, y1 in scene.boxes_px[scene.classes == "car"]:
        along_x = (x1 - x0) > (y1 - y0)
        a0, a1, c = (x0, x1, (y0 + y1) / 2) if along_x else (y0, y1, (x0 + x1) / 2)
        centres = np.arange(np.floor(a0), np.ceil(a1)) + 0.5
        t = (centres - a0) / (a1 - a0)
        glass = centres[(t > 0.23) & (t < 0.35)]
        body = centres[(t > 0.42) & (t < 0.66)]
        if not len(glass) or not len(body):
            continue
        at = (lambda u: lum[int(c), int(u)]) if along_x else (lambda u: lum[int(u), int(c)])
        darker.append(min(at(g) for g in glass) < max(at(b) for b in body) - 30)
    assert len(darker) > 50
    assert np.mean(darker) > 0.75  # black cars (18 %) have no darker windscreen


def test_bad_params_raise_geodet_error():
    from dataclasses import replace

    good = draw_params(0, "hard")
    for change in (
        dict(difficulty="medium"),
        dict(car_width_px=(8.0, 9.0)),  # wider than long
        dict(car_length_px=None),
        dict(rare_class="tree"),
        dict(rare_share=0.6),
        dict(contrast=0.0),
        dict(car_vertical_share=1.5),
        dict(blur_sigma_px=(0.0, 1.0)),
        dict(noise=-0.1),
    ):
        with pytest.raises(GeodetError):
            make_scene(64, 64, params=replace(good, **change))
    with pytest.raises(GeodetError):
        make_scene(64, 64, difficulty="hard", params=good)
