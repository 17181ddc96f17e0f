"""geodet.core.mosaic: scenes of one mosaic detected across their shared edges."""

import dataclasses
import os

import numpy as np
import pandas as pd
import pytest
import rasterio
import rasterio.shutil
import torch
from affine import Affine
from rasterio.crs import CRS
from rasterio.io import MemoryFile
from torchvision.ops import box_iou

from geodet.config import DetectConfig
from geodet.inference.detection import detect
from geodet.inference.detector import default_model_path, load_detector
from geodet.inference.scenes import detect_task, plan_tasks
from geodet.core.mosaic import (
    Footprint,
    group_footprints,
    grid_chip_windows,
    is_seam,
    mosaic_contexts,
    owned_mask,
    sources_in_order,
    vrt_xml,
)
from geodet.testing import synthetic
from geodet.core.windows import chip_windows

UTM = CRS.from_epsg(32611).to_wkt()


def _fp(col, row, w=100, h=100, *, px=0.5, crs=UTM, shift=0.0, name=None):
    t = Affine(px, 0, 500000 + (col + shift) * px, 0, -px, 3760000 - row * px)
    return Footprint(name or f"s{col}_{row}.tif", crs, t, w, h, 3, "uint8")


# ---------------------------------------------------------------- grouping (pure)


def test_touching_tiles_form_one_mosaic_and_others_stay_alone():
    fps = [
        _fp(0, 0), _fp(100, 0), _fp(0, 100), _fp(100, 100),  # 2 x 2 tiles touching exactly
        _fp(200, 200, crs=CRS.from_epsg(32612).to_wkt()),  # touches a corner, another CRS
        _fp(200, 0, shift=0.5),  # touches, but half a pixel off the grid
        _fp(200, 100, px=0.25),  # touches, another pixel size
        _fp(1000, 1000),  # same grid, far away
        None,  # could not be opened
    ]
    groups = group_footprints(fps)
    assert len(groups) == 1
    assert [i for i, _r in groups[0]] == [0, 1, 2, 3]
    rects = [(0, 0, 100, 100), (100, 0, 200, 100), (0, 100, 100, 200), (100, 100, 200, 200)]
    assert [r for _i, r in groups[0]] == rects


def test_grouping_is_transitive_and_counts_corners_and_overlaps():
    # a chain: 0 overlaps 1 by 10 px, 1 touches 2 at a corner only; 3 is a separate pair with 4
    fps = [_fp(0, 0), _fp(90, 0), _fp(190, 100), _fp(500, 0), _fp(600, 0)]
    groups = group_footprints(fps)
    assert [[i for i, _r in g] for g in groups] == [[0, 1, 2], [3, 4]]
    # alignment within the tolerance still groups (float round-off of cut tiles)
    assert len(group_footprints([_fp(0, 0), _fp(100, 0, shift=1e-4)])) == 1


def test_two_images_of_one_place_are_not_one_mosaic():
    fps = [_fp(0, 0), _fp(0, 0, name="other_date.tif"), _fp(50, 50), _fp(100, 0)]
    groups = group_footprints(fps)
    # identical and half-covering footprints are other images; the tile to the right is a neighbour
    assert [[i for i, _r in g] for g in groups] == [[0, 1, 3]]
    ctxs = mosaic_contexts(fps, groups[0])
    assert [n.order for n in ctxs[0].neighbours] == [2] and ctxs[0].later == ()
    assert is_seam((0, 0, 100, 100), (75, 0, 175, 100)) and not is_seam((0, 0, 100, 100), (70, 10, 170, 110))


def test_ownership_partitions_the_mosaic_with_half_open_edges():
    fps = [_fp(0, 0), _fp(90, 0), _fp(0, 100), _fp(90, 100)]  # columns overlap by 10 px
    (group,) = group_footprints(fps)
    ctxs = mosaic_contexts(fps, group)
    rng = np.random.default_rng(0)
    pts = np.vstack([
        rng.uniform([0, 0], [190, 200], size=(2000, 2)),
        [[100, 50], [90, 50], [50, 100], [90, 100], [100, 100], [0, 0], [189.999, 199.999]],  # on edges
    ])
    owners = np.stack([owned_mask(pts, c.own.rect_px, c.later) for c in ctxs])
    assert (owners.sum(axis=0) == 1).all()  # every point of the union has exactly one owner
    assert not owned_mask(np.array([[190.0, 50.0], [-0.5, 3.0]]), ctxs[1].own.rect_px, ctxs[1].later).any()
    # the later scene owns the overlap, and the VRT draws it last
    assert owners[1][np.flatnonzero((pts[:, 0] >= 90) & (pts[:, 0] < 100) & (pts[:, 1] < 100))].all()
    assert [s.order for s in sources_in_order(ctxs[0])] == [0, 1, 2, 3]


def test_grid_chips_are_the_whole_mosaic_chips_near_a_region():
    whole = chip_windows(700, 900, 256, 64)
    near = grid_chip_windows((700, 900), 256, 64, (300, 200, 500, 400))
    assert near and set(near) <= set(whole)
    x0, y0, x1, y1 = 300, 200, 500, 400
    touching = [
        w for w in whole
        if w.col_off < x1 and w.col_off + w.width > x0 and w.row_off < y1 and w.row_off + w.height > y0
    ]
    assert near == touching
    # a mosaic smaller than a chip: one window of its extent, as chip_windows
    assert grid_chip_windows((100, 120), 256, 64, (0, 0, 50, 50)) == chip_windows(100, 120, 256, 64)


def test_vrt_opens_and_masks_what_no_scene_covers(tmp_path):
    scene = synthetic.make_scene(64, 64, seed=1)
    fps = []
    for k, col in enumerate((0, 64)):  # two tiles side by side, the second one row lower
        t = synthetic.scene_transform((500000.0 + col * 0.4, 3760000.0 - k * 0.4))
        path = tmp_path / f"t{k}.tif"
        synthetic.write_scene(path, scene, transform=t)
        fps.append(Footprint(str(path), UTM, t, 64, 64, 3, "uint8"))
    (group,) = group_footprints(fps)
    ctx = mosaic_contexts(fps, group)[0]
    assert ctx.grid_shape == (65, 128)
    with MemoryFile(vrt_xml(ctx, sources_in_order(ctx)).encode(), filename="m.vrt") as mem, mem.open() as vrt:
        assert vrt.crs.to_epsg() == 32611 and vrt.transform == fps[0].transform
        data, mask = vrt.read(), vrt.read_masks(1)
    np.testing.assert_array_equal(data[:, :64, :64], scene.image)
    np.testing.assert_array_equal(data[:, 1:, 64:], scene.image)
    assert mask[64, :64].max() == 0 and mask[0, 64:].max() == 0  # uncovered corners masked
    assert mask[:64, :64].min() == 255 and mask[1:, 64:].min() == 255


# ---------------------------------------------------------------- detection across seams (real model, real files)


@pytest.fixture(scope="module")
def detector():
    return load_detector(default_model_path(), DetectConfig(score_threshold=0.3, device="cpu"))


def _crossing(boxes, at, axis, margin=3.0):
    """Boxes cut by the line ``x = at`` (axis 0) or ``y = at`` (axis 1) with ``margin`` px on each side."""
    return (boxes[:, axis] < at - margin) & (boxes[:, axis + 2] > at + margin)


def _cut_points(scene):
    """A column and a row, near the middle, that cut through objects."""
    boxes = scene.boxes_px
    mid = scene.width // 2
    xs = [x for x in range(mid - 60, mid + 60) if _crossing(boxes, x, 0).any()]
    ys = [y for y in range(mid - 60, mid + 60) if _crossing(boxes, y, 1).any()]
    return xs[len(xs) // 2], ys[len(ys) // 2]


def _write_tiles(tmp_path, scene, transform, cx, cy, overlap_px=0):
    """Four GeoTIFFs cut from ``scene`` at column ``cx`` and row ``cy``, grown by ``overlap_px`` into each other."""
    paths = []
    for r0, r1 in ((0, cy), (cy, scene.height)):
        for c0, c1 in ((0, cx), (cx, scene.width)):
            r0o, r1o = max(r0 - overlap_px, 0), min(r1 + overlap_px, scene.height)
            c0o, c1o = max(c0 - overlap_px, 0), min(c1 + overlap_px, scene.width)
            part = dataclasses.replace(scene, image=np.ascontiguousarray(scene.image[:, r0o:r1o, c0o:c1o]))
            path = tmp_path / f"tile_{r0}_{c0}.tif"
            synthetic.write_scene(path, part, transform=transform * Affine.translation(c0o, r0o))
            paths.append(str(path))
    return paths


def _boxes(frame, transform):
    """Detections as ``[N, 4]`` xyxy pixels of ``transform``'s grid (north-up), sorted by score."""
    frame = frame.sort_values("score", ascending=False, ignore_index=True)
    b = frame.geometry.bounds.to_numpy()
    inv = ~transform
    x0, y1 = inv * (b[:, 0], b[:, 1])
    x1, y0 = inv * (b[:, 2], b[:, 3])
    return np.column_stack([x0, y0, x1, y1]), frame.score.to_numpy()


def _pair(a, b):
    """Index of the box of ``b`` with the highest IoU to each box of ``a``, and that IoU."""
    iou = box_iou(torch.as_tensor(a), torch.as_tensor(b)).numpy()
    return iou.argmax(axis=1), iou.max(axis=1)


# Chips, windows and pixels are identical (the mosaic's chip grid is the whole scene's); what may
# differ is only the float32 arithmetic of a convolution over a batch holding other chips, a few
# ulps of activations of order 10 (~1e-5), which moves a sigmoid score by at most its slope (1/4)
# times that and a box by the box-regression scale (~ tens of px per unit) times that.
SCORE_TOL = 1e-4
BOX_TOL_PX = 1e-2


@pytest.mark.parametrize("overlap_px", [0, 24])
def test_four_tiles_give_the_whole_scene_detections(tmp_path, make_scene_files, detector, overlap_px):
    s = make_scene_files(512, 512, seed=7)
    cx, cy = _cut_points(s.scene)
    tiles = _write_tiles(tmp_path, s.scene, s.transform, cx, cy, overlap_px)
    assert all(ctx is not None for ctx in (t.context for t in plan_tasks(tiles)))

    whole = detect_task(plan_tasks([s.path])[0], detector)
    frames = [detect_task(t, detector) for t in plan_tasks(tiles)]
    whole_px, whole_scores = _boxes(whole, s.transform)
    tiles_px, tiles_scores = _boxes(pd.concat(frames), s.transform)

    assert len(whole_px) > 20
    assert len(tiles_px) == len(whole_px)
    match, iou = _pair(tiles_px, whole_px)
    assert len(set(match)) == len(match)  # one to one
    np.testing.assert_allclose(tiles_px, whole_px[match], atol=BOX_TOL_PX)
    np.testing.assert_allclose(tiles_scores, whole_scores[match], atol=SCORE_TOL)
    # the objects cut by the seams are found once, whole, in the scene that owns their centre
    truth = s.scene.boxes_px
    seam = _crossing(truth, cx, 0) | _crossing(truth, cy, 1)
    assert seam.sum() >= 2
    _, truth_iou = _pair(truth[seam], tiles_px)
    found = truth_iou >= 0.7
    assert found.sum() >= 0.8 * seam.sum()
    hits = (box_iou(torch.as_tensor(truth[seam][found]), torch.as_tensor(tiles_px)).numpy() >= 0.3).sum(axis=1)
    assert (hits == 1).all()
    assert all(set(f.scene) <= {p.rsplit("/", 1)[1] for p in tiles} for f in frames if len(f))


def test_without_mosaic_each_tile_is_alone_and_seams_cut_objects(tmp_path, make_scene_files):
    s = make_scene_files(512, 512, seed=7)
    cx, cy = _cut_points(s.scene)
    tiles = _write_tiles(tmp_path, s.scene, s.transform, cx, cy)
    assert all(t.context is None for t in plan_tasks(tiles, mosaic=False))
    seam = _crossing(s.scene.boxes_px, cx, 0) | _crossing(s.scene.boxes_px, cy, 1)
    best_iou = {}
    for mosaic in (False, True):
        config = DetectConfig(score_threshold=0.3, device="cpu", mosaic=mosaic)
        frame = detect(tiles, default_model_path(), config=config)
        assert set(frame.scene) <= {p.rsplit("/", 1)[1] for p in tiles}
        _, best_iou[mosaic] = _pair(s.scene.boxes_px[seam], _boxes(frame, s.transform)[0])
    # alone, an object cut by a tile edge is found at best in parts; across the seams, whole
    assert best_iou[False].min() < 0.8 < best_iou[True].min()


def test_a_scene_of_another_crs_is_not_grouped(tmp_path, make_scene_files):
    s = make_scene_files(128, 128, seed=2, name="a")
    t = make_scene_files(128, 128, seed=3, name="b", crs="EPSG:32612")  # same origin numbers, another CRS
    u_scene = synthetic.make_scene(128, 128, seed=4)
    u = tmp_path / "c.tif"
    synthetic.write_scene(u, u_scene, transform=s.transform * Affine.translation(128, 0))  # right of a
    tasks = plan_tasks([s.path, t.path, str(u)])
    assert tasks[1].context is None
    assert tasks[0].context is not None and tasks[2].context is not None
    assert tasks[0].context.group_size == 2


def test_an_unreadable_neighbour_leaves_nodata_in_the_halo(tmp_path, make_scene_files, detector, caplog):
    s = make_scene_files(256, 256, seed=7)
    tiles = _write_tiles(tmp_path, s.scene, s.transform, 128, 128)
    tasks = plan_tasks(tiles)
    # a neighbour whose header is intact but whose data blocks are cut off (a half-downloaded COG)
    cog = tmp_path / "cog.tif"
    rasterio.shutil.copy(tiles[1], cog, driver="COG", blocksize=64)
    data = cog.read_bytes()
    with open(tiles[1], "wb") as f:
        f.write(data[: len(data) * 2 // 5])
    with caplog.at_level("WARNING", logger="geodet.inference.scenes"):
        frame = detect_task(tasks[0], detector)
    assert "detecting it alone" in caplog.text
    assert set(frame.scene) <= {"tile_0_0.tif"}
    os.remove(tiles[1])  # a neighbour that is gone is left out of the VRT
    caplog.clear()
    with caplog.at_level("WARNING", logger="geodet.inference.scenes"):
        assert detect_task(tasks[0], detector).crs == frame.crs
    assert "cannot be opened" in caplog.text and "detecting it alone" not in caplog.text


def test_cli_mosaic_flag(tmp_path, make_scene_files):
    from click.testing import CliRunner

    from geodet_cli.main import cli

    s = make_scene_files(192, 192, seed=7)
    tiles = _write_tiles(tmp_path, s.scene, s.transform, 96, 96)
    for flag in ("--mosaic", "--no-mosaic"):
        out = tmp_path / f"dets{flag}.gpkg"
        res = CliRunner().invoke(cli, ["detect", *tiles, "-o", str(out), "--quiet", "--device", "cpu", flag])
        assert res.exit_code == 0, res.output
        assert "from 4 scene(s)" in res.output and out.exists()
