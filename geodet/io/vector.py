"""Reading vector files: labels and truth (any OGR format, any CRS).

Reading validates what users get wrong (no CRS, empty file, missing class
field, invalid geometries, labels off the imagery) and converts labels to
pixel boxes of a scene. Writing detections is :mod:`geodet.io.formats`.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely

from geodet.core.boxes import box_area, geometries_to_pixel_boxes
from geodet.errors import GeodetError, first_line
from geodet.io.raster import SceneInfo

log = logging.getLogger(__name__)

#: Class name used when the labels carry no class column.
DEFAULT_CLASS = "object"

#: Columns probed, in order, when no class field is named.
AUTO_CLASS_FIELDS = ("class", "label", "category")

@dataclass(frozen=True)
class LabelSet:
    """Labels read from a vector file, checked, with class names resolved.

    Attributes:
        path: the file read.
        frame: GeoDataFrame with a valid, non-empty ``geometry`` and a
            ``class_name`` column (str).
        class_names: sorted class names.
        class_field: the column the class names came from, or None.
    """

    path: str
    frame: gpd.GeoDataFrame
    class_names: Tuple[str, ...]
    class_field: Optional[str]


@dataclass(frozen=True)
class SceneLabels:
    """Labels of one scene as pixel boxes.

    Attributes:
        boxes_px: float64 ``[N, 4]`` xyxy in scene pixels (may extend past
            the scene edge; chips clip them).
        class_ids: int64 ``[N]`` indices into the label set's class names.
    """

    boxes_px: np.ndarray
    class_ids: np.ndarray


def read_vector_file(path, what: str = "vector") -> gpd.GeoDataFrame:
    """Read any vector file geopandas reads; a missing or unreadable file is a
    :class:`GeodetError` naming ``what`` (e.g. "labels", "predictions")."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise GeodetError(f"the {what} file {path} does not exist.")
    try:
        return gpd.read_file(path, engine="pyogrio")
    except Exception as exc:  # pyogrio raises several types for bad files
        raise GeodetError(f"{path} is not a readable vector file ({first_line(exc)}).") from exc


def read_frame(obj, what: str) -> Tuple[gpd.GeoDataFrame, str]:
    """Vector data given as a path or a GeoDataFrame, checked for a CRS, without empty geometries.

    The one place where geodet reads vector data and checks where it lies; labels, ground truth,
    predictions and drawn outlines all come through here.

    Args:
        obj: path of any vector file geopandas reads, a GeoDataFrame or a GeoSeries.
        what: what the data is, for messages (e.g. "labels", "predictions").

    Returns:
        ``(frame, name)``: the frame without null or empty geometries (dropped with a warning)
        and its name for messages (the path, or ``"the <what> GeoDataFrame"``).

    Raises:
        GeodetError: not a path or a frame, a missing or unreadable file, or features without a
            CRS (an empty frame needs none: it has nothing to place).
    """
    if isinstance(obj, (str, os.PathLike)):
        name = os.fspath(obj)
        frame = read_vector_file(name, what)
        hint = f"ogr2ogr -a_srs EPSG:XXXX out.gpkg {name}"
    elif isinstance(obj, (gpd.GeoDataFrame, gpd.GeoSeries)):
        name = f"the {what} GeoDataFrame"
        frame = obj if isinstance(obj, gpd.GeoDataFrame) else gpd.GeoDataFrame(geometry=obj)
        hint = "GeoDataFrame.set_crs"
    else:
        raise GeodetError(f"the {what} must be a vector file path or a GeoDataFrame, got {type(obj).__name__}.")
    empty = frame.geometry.isna() | frame.geometry.is_empty
    if empty.any():
        log.warning("%s: %d empty geometr(ies) dropped", name, int(empty.sum()))
        frame = frame[~empty]
    if len(frame) and frame.crs is None:
        raise GeodetError(f"{name} has no CRS, so its features cannot be placed; set one first (e.g. {hint}).")
    return frame, name


def auto_class_field(columns) -> Optional[str]:
    """The class column used when none is named: the first of :data:`AUTO_CLASS_FIELDS` in ``columns``, or None."""
    return next((f for f in AUTO_CLASS_FIELDS if f in columns), None)


def read_labels(
    path: str,
    *,
    class_field: Optional[str] = None,
    class_names: Optional[Sequence[str]] = None,
) -> LabelSet:
    """Read and check a vector label file.

    Args:
        path: any vector file geopandas reads (GeoJSON, shapefile, GPKG...).
        class_field: column holding class names; None uses :func:`auto_class_field`
            (the first of ``class``, ``label``, ``category`` present), else one class.
        class_names: fixed class names (e.g. a model's); labels of other
            classes are dropped with a warning. None = the sorted names found.

    Raises:
        GeodetError: unreadable file, no CRS, no features, unknown class field,
            no usable geometry.
    """
    frame, path = read_frame(path, "labels")
    if len(frame) == 0:
        raise GeodetError(f"{path} holds no features.")

    field = class_field
    if field is None:
        field = auto_class_field(frame.columns)
    elif field not in frame.columns:
        cols = ", ".join(c for c in frame.columns if c != "geometry") or "none"
        raise GeodetError(f"{path} has no field {field!r} (its fields: {cols}).")

    frame = _clean_geometries(frame, path)

    if field is None:
        names = frame.assign(class_name=DEFAULT_CLASS)["class_name"]
    else:
        names = class_name_strings(frame[field])
        missing = int(names.isna().sum())
        if missing:
            log.warning("%s: %d feature(s) without a value in %r dropped", path, missing, field)
            frame, names = frame[names.notna()], names[names.notna()]
    frame = frame.assign(class_name=names.astype(str).values)

    if class_names is None:
        found = tuple(sorted(frame["class_name"].unique()))
    else:
        found = tuple(class_names)
        known = frame["class_name"].isin(found)
        if not known.all():
            other = sorted(set(frame.loc[~known, "class_name"]))
            log.warning("%s: %d feature(s) of classes %s not in %s dropped", path, int((~known).sum()), other, found)
            frame = frame[known]
    if len(frame) == 0:
        raise GeodetError(f"{path} holds no usable labels after cleaning.")
    return LabelSet(path=str(path), frame=frame.reset_index(drop=True), class_names=found, class_field=field)


def class_name_strings(values) -> "pd.Series":
    """Class names as text, None where missing: ``1``, not ``1.0``, for a whole-number column.

    A column of integers with some nulls reaches pandas as float64; its values are written back
    as the integers they were, so the class of ``1`` is ``"1"`` in labels, models and outputs.
    """
    values = pd.Series(values)
    present = values.notna()
    if pd.api.types.is_float_dtype(values) and np.all(np.mod(values[present].to_numpy(), 1) == 0):
        values = values.astype("Int64")
    return values.astype(str).where(present, None)


def _clean_geometries(frame: gpd.GeoDataFrame, path: str) -> gpd.GeoDataFrame:
    """Invalid geometries repaired with ``make_valid`` (empty ones are gone: :func:`read_frame`)."""
    geom = frame.geometry
    invalid = ~geom.is_valid
    if invalid.any():
        log.warning("%s: %d invalid geometr(ies) repaired with make_valid", path, int(invalid.sum()))
        fixed = shapely.make_valid(geom.values.to_numpy() if hasattr(geom.values, "to_numpy") else np.asarray(geom))
        frame = frame.set_geometry(gpd.GeoSeries(fixed, index=frame.index, crs=frame.crs))
        still_empty = frame.geometry.is_empty
        frame = frame[~still_empty]
    if len(frame) == 0:
        raise GeodetError(f"{path} holds no usable geometries.")
    return frame


def labels_for_scene(labels: LabelSet, info: SceneInfo, *, point_size_m: float = 5.0) -> SceneLabels:
    """Pixel boxes of the labels that intersect one scene.

    Polygons and lines give their pixel bounding boxes; points give a square
    of ``point_size_m`` metres (built in a local UTM zone, so geographic CRSs
    work too). Labels are reprojected to the scene's CRS first.

    Returns:
        The labels whose boxes intersect the scene; may be empty.
    """
    frame = labels.frame.to_crs(info.crs)
    geoms = frame.geometry
    is_point = geoms.geom_type.isin(["Point", "MultiPoint"]).to_numpy()
    if is_point.any():
        geoms = geoms.copy()
        geoms[is_point] = _point_squares(frame[is_point], point_size_m, info.crs)
    boxes = geometries_to_pixel_boxes(geoms.values, info.transform)
    ids = np.searchsorted(np.asarray(labels.class_names), frame["class_name"].to_numpy())
    ok = np.all(np.isfinite(boxes), axis=1) & (box_area(boxes) > 0)
    inside = (
        ok
        & (boxes[:, 2] > 0)
        & (boxes[:, 0] < info.width)
        & (boxes[:, 3] > 0)
        & (boxes[:, 1] < info.height)
    )
    return SceneLabels(boxes_px=boxes[inside], class_ids=ids[inside].astype(np.int64))


def _point_squares(points: gpd.GeoDataFrame, side_m: float, scene_crs) -> gpd.GeoSeries:
    if side_m <= 0:
        raise GeodetError(f"the point box size must be positive, got {side_m} m.")
    geo = points.geometry
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        local = geo.to_crs(geo.estimate_utm_crs()) if not _is_metric(scene_crs) else geo
    squares = local.buffer(side_m / 2, cap_style="square")
    return squares.to_crs(scene_crs)


def _is_metric(crs) -> bool:
    try:
        return bool(crs.is_projected) and abs(float(crs.linear_units_factor[1]) - 1.0) < 1e-9
    except Exception:  # CRS without linear units
        return False


def check_labels_inside(labels: LabelSet, per_scene: Sequence[SceneLabels], scene_paths: Sequence[str]) -> None:
    """Raise when no label lands on any scene, saying how many of how many."""
    inside = sum(len(s.boxes_px) for s in per_scene)
    if inside == 0:
        raise GeodetError(
            f"none of the {len(labels.frame)} labels in {labels.path} fall inside "
            f"{', '.join(map(str, scene_paths))} (0 of {len(labels.frame)} inside); "
            "check that the labels and the imagery cover the same area."
        )
    log.info("%d of %d labels fall inside the imagery", inside, len(labels.frame))


# ---------------------------------------------------------------- writing
