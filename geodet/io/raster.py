"""Scene I/O: open a scene (a local file or a remote one through GDAL), sample band statistics, read one chip.

Only windowed reads: no function here reads a whole scene into memory,
whether the GeoTIFF is internally tiled or striped.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np
import rasterio
from affine import Affine
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError
from rasterio.windows import Window

from geodet.core.windows import chip_windows
from geodet.errors import GeodetError, first_line
from geodet.io.sources import GDAL_CACHE_MB  # noqa: F401 (its home is geodet.io.sources; still importable here)
from geodet.io.sources import gdal_env, is_virtual, redact, to_gdal_path

log = logging.getLogger(__name__)

#: Normalised values are clipped to this many standard deviations.
CLIP_SIGMA = 6.0


@dataclass(frozen=True)
class SceneInfo:
    """What geodet needs to know about a scene, without its pixels.

    Attributes:
        path: the scene as GDAL opened it (a file path or a GDAL virtual path).
        height, width: size in pixels.
        count: number of bands in the file.
        dtype: numpy dtype name of the pixels.
        crs: the scene's CRS (rasterio CRS).
        transform: affine mapping pixel corners (col, row) to CRS coordinates.
        nodata: nodata value or None.
        res: pixel size (x, y) in CRS units, always positive.
    """

    path: str
    height: int
    width: int
    count: int
    dtype: str
    crs: object
    transform: Affine
    nodata: Optional[float]
    res: Tuple[float, float]

    @property
    def gsd(self) -> float:
        """Ground sample distance: the mean pixel side in CRS units."""
        return float((self.res[0] + self.res[1]) / 2)


def open_raster(path: str):
    """Open any raster GDAL reads, with geodet's GDAL settings (:func:`geodet.io.sources.gdal_env`).

    ``path`` is a local path, a GDAL virtual path (``/vsicurl/...``, ``/vsis3/...``) or a URL
    (mapped by :func:`geodet.io.sources.to_gdal_path`). Returns an open rasterio dataset (the
    caller closes it); no georeferencing check (see :func:`open_dataset`).

    Raises:
        GeodetError: a missing local file, an unreachable or missing remote one, or a file GDAL
            cannot read as a raster; one sentence naming it.
    """
    path = to_gdal_path(os.fspath(path))
    remote = is_virtual(path)
    if not remote and not os.path.exists(path):
        raise GeodetError(f"{path} does not exist.")
    try:
        with warnings.catch_warnings(), gdal_env(path):
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            return rasterio.open(path)
    except RasterioIOError as exc:
        if remote:
            reason = first_line(exc).rstrip(".")
            if "not recognized as being in a supported file format" in reason:  # GDAL's words for no bytes, too
                reason = ("GDAL found no raster in what it read: the file is of another kind, or the server sent "
                          "too little within GDAL_HTTP_CONNECTTIMEOUT / GDAL_HTTP_LOW_SPEED_TIME")
            raise GeodetError(redact(f"{path} could not be opened ({reason}).")) from None
        raise GeodetError(f"{path} is not a readable raster ({first_line(exc)}).") from exc


def open_dataset(path: str):
    """Open a scene (see :func:`open_raster`) for windowed reads after checking it is georeferenced.

    Returns an open rasterio dataset (the caller closes it).

    Raises:
        GeodetError: missing or unreadable file, no geotransform, no CRS.
    """
    src = open_raster(path)
    try:
        _check_georeferenced(src, path)
    except GeodetError:
        src.close()
        raise
    return src


def _check_georeferenced(src, path: str) -> None:
    if src.transform == Affine.identity() and not src.gcps[0]:
        raise GeodetError(
            f"{redact(path)} has no geotransform, so its pixels cannot be placed on the map; "
            "georeference it first (e.g. gdal_translate -a_ullr ... -a_srs ...)."
        )
    if src.crs is None:
        raise GeodetError(
            f"{redact(path)} has no CRS; assign one first (e.g. gdal_edit.py -a_srs EPSG:XXXX {redact(path)})."
        )


def open_scene(path: str) -> SceneInfo:
    """Read a scene's metadata (no pixels).

    Raises:
        GeodetError: missing or unreadable file, no geotransform, no CRS.
    """
    with open_dataset(path) as src:
        return scene_info(src)


def scene_info(src) -> SceneInfo:
    """:class:`SceneInfo` of an open rasterio dataset."""
    t = src.transform
    res = (float(np.hypot(t.a, t.d)), float(np.hypot(t.b, t.e)))
    return SceneInfo(
        path=str(src.name),
        height=int(src.height),
        width=int(src.width),
        count=int(src.count),
        dtype=str(src.dtypes[0]),
        crs=src.crs,
        transform=t,
        nodata=src.nodata,
        res=res,
    )


def gsd_metres(info: SceneInfo) -> float:
    """The scene's pixel size in metres (approximate for geographic CRSs)."""
    crs = info.crs
    try:
        if crs.is_geographic:
            lat = (info.transform @ (info.width / 2, info.height / 2))[1]
            x_m = info.res[0] * 111_320.0 * max(float(np.cos(np.radians(lat))), 1e-6)
            y_m = info.res[1] * 110_574.0
            return float((x_m + y_m) / 2)
        return info.gsd * float(crs.linear_units_factor[1])
    except Exception:  # a CRS without usable units
        return info.gsd


def parse_bands(text: Optional[str]) -> Optional[Tuple[int, ...]]:
    """Parse a ``"1,2,3"`` band list (1-based); ``None``/empty means all bands."""
    if text is None or str(text).strip() == "":
        return None
    try:
        bands = tuple(int(b) for b in str(text).replace(" ", "").split(","))
    except ValueError as exc:
        raise GeodetError(f"bands must be comma-separated band numbers such as 1,2,3, got {text!r}.") from exc
    if any(b < 1 for b in bands):
        raise GeodetError(f"band numbers start at 1, got {text!r}.")
    return bands


def resolve_bands(info: SceneInfo, bands: Optional[Sequence[int]]) -> Tuple[int, ...]:
    """The 1-based band indices to read from a scene; all bands when ``None``.

    Raises:
        GeodetError: a band index beyond the scene's band count.
    """
    if bands is None:
        return tuple(range(1, info.count + 1))
    bands = tuple(int(b) for b in bands)
    bad = [b for b in bands if not 1 <= b <= info.count]
    if bad:
        raise GeodetError(
            f"{redact(info.path)} has {info.count} band(s) but band(s) {', '.join(map(str, bad))} were asked for."
        )
    return bands


@contextlib.contextmanager
def read_errors(src, window: Window):
    """Turn a failed read of ``window`` into one sentence naming the file, window and GDAL's reason.

    A file whose header is intact but whose data blocks are cut off or corrupt (a half-downloaded
    COG, a bad disk) opens fine and fails only here; a remote one also when the network fails.

    Every windowed read in geodet runs in this context, so it also holds geodet's GDAL settings
    (:func:`geodet.io.sources.gdal_env`: retries of remote reads, the byte-range cache), in
    whichever thread the read runs.
    """
    try:
        with gdal_env(src.name):
            yield
    except RasterioIOError as exc:
        cause = exc.__cause__ or exc.__context__
        reason = (first_line(cause) if cause is not None else first_line(exc)).rstrip(".")
        where = (f"the window at column {int(window.col_off)}, row {int(window.row_off)} "
                 f"({int(window.width)} x {int(window.height)} px)")
        if is_virtual(src.name):
            raise GeodetError(redact(f"{src.name}: reading {where} failed ({reason}).")) from None
        raise GeodetError(f"{src.name} is damaged or incomplete: reading {where} failed ({reason}).") from None


def read_raw(
    src,
    window: Window,
    bands: Sequence[int],
    *,
    out_shape: Optional[Tuple[int, int]] = None,
) -> Tuple[np.ndarray, np.ndarray]:
    """Read a window's pixels in their own dtype, and their validity.

    Args:
        src: open rasterio dataset.
        window: the window in scene pixels.
        bands: 1-based band indices.
        out_shape: ``(height, width)`` to resample to (bilinear for pixels,
            nearest for the mask), or None for native resolution.

    Returns:
        ``(pixels [C, h, w] in the file's dtype, valid bool [h, w])``; a pixel
        is valid when no band is masked (nodata, alpha or internal mask) and
        no value is NaN.
    """
    bands = list(bands)
    data_kw, mask_kw = {}, {}
    if out_shape is not None:
        shape = (len(bands), *out_shape)
        data_kw = dict(out_shape=shape, resampling=rasterio.enums.Resampling.bilinear)
        mask_kw = dict(out_shape=shape, resampling=rasterio.enums.Resampling.nearest)
    with read_errors(src, window):
        data = src.read(bands, window=window, **data_kw)
        valid = np.all(src.read_masks(bands, window=window, **mask_kw) > 0, axis=0)
    if data.dtype.kind == "f":
        valid &= np.all(np.isfinite(data), axis=0)
    return data, valid


def read_window(
    src,
    window: Window,
    bands: Sequence[int],
    *,
    out_shape: Optional[Tuple[int, int]] = None,
) -> Tuple[np.ndarray, np.ndarray]:
    """:func:`read_raw` with the pixels as float32 ``[C, h, w]``."""
    data, valid = read_raw(src, window, bands, out_shape=out_shape)
    return data.astype(np.float32, copy=False), valid


@dataclass(frozen=True)
class BandStats:
    """Per-band statistics used to normalise chips.

    Attributes:
        mean: [C] per-band mean of valid pixels.
        std: [C] per-band standard deviation of valid pixels (>= a small epsilon).
        pixels: valid pixels the statistics were sampled from (0 = unknown, e.g.
            statistics read back from a model file).
    """

    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    pixels: int = 0


def _floored_std(std: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """``std`` raised to a small epsilon relative to ``mean``, so that normalising never divides by ~0."""
    return np.maximum(std, 1e-6 * np.maximum(np.abs(mean), 1.0))


def pool_band_stats(stats: Sequence[BandStats]) -> BandStats:
    """The statistics of the union of several scenes' samples, weighted by their pixels.

    One scene's statistics come back unchanged. When a sample's pixel count is
    unknown (0), every scene weighs the same.

    Args:
        stats: per-scene statistics over the same bands, at least one.
    """
    if len(stats) == 1:
        return stats[0]
    counts = np.array([s.pixels for s in stats], np.float64)
    weights = counts if counts.all() else np.ones(len(stats))
    weights = weights[:, None] / weights.sum()
    means = np.array([s.mean for s in stats], np.float64)  # [S, C]
    stds = np.array([s.std for s in stats], np.float64)
    mean = (weights * means).sum(axis=0)
    second = (weights * (stds**2 + means**2)).sum(axis=0)
    std = _floored_std(np.sqrt(np.maximum(second - mean**2, 0.0)), mean)
    return BandStats(
        mean=tuple(float(m) for m in mean), std=tuple(float(s) for s in std), pixels=int(counts.sum())
    )


def sample_band_stats(
    src,
    bands: Sequence[int],
    *,
    sample_windows: int = 32,
    window_px: int = 256,
    seed: int = 0,
) -> BandStats:
    """Per-band mean and std from a sample of windows spread over the scene.

    Windows are a deterministic random subset of a grid of ``window_px``
    windows, so the cost is bounded whatever the scene size.

    Raises:
        GeodetError: the sample holds no valid pixel.
    """
    windows = chip_windows(src.height, src.width, window_px, 0)
    rng = np.random.default_rng(seed)
    if len(windows) > sample_windows:
        picks = rng.choice(len(windows), size=sample_windows, replace=False)
        windows = [windows[i] for i in sorted(picks)]
    total = np.zeros(len(bands), np.float64)
    total_sq = np.zeros(len(bands), np.float64)
    n = 0
    with gdal_env(src.name):
        for window in windows:
            data, valid = read_window(src, window, bands)
            if not valid.any():
                continue
            pix = data[:, valid].astype(np.float64)
            total += pix.sum(axis=1)
            total_sq += (pix**2).sum(axis=1)
            n += pix.shape[1]
    if n == 0:
        raise GeodetError(f"{redact(src.name)} holds no valid (non-nodata) pixels in the sampled windows.")
    mean = total / n
    std = np.sqrt(np.maximum(total_sq / n - mean**2, 0.0))
    std = _floored_std(std, mean)
    return BandStats(mean=tuple(float(m) for m in mean), std=tuple(float(s) for s in std), pixels=int(n))


def normalise(data: np.ndarray, valid: np.ndarray, stats: BandStats) -> np.ndarray:
    """``(data - mean) / std`` per band, invalid pixels set to 0 (the mean).

    Args:
        data: float32 [C, H, W] raw pixels.
        valid: bool [H, W].

    Returns:
        float32 [C, H, W], clipped to +-CLIP_SIGMA.
    """
    mean = np.asarray(stats.mean, np.float32)[:, None, None]
    std = np.asarray(stats.std, np.float32)[:, None, None]
    out = (data - mean) / std
    np.clip(out, -CLIP_SIGMA, CLIP_SIGMA, out=out)
    out[:, ~valid] = 0.0
    return out


def read_chip(
    src,
    window: Window,
    bands: Sequence[int],
    stats: BandStats,
    size_px: int,
    *,
    out_shape: Optional[Tuple[int, int]] = None,
) -> Tuple[np.ndarray, np.ndarray]:
    """Read one normalised chip, padded at the bottom/right to ``size_px``.

    Args:
        src: open rasterio dataset.
        window: window in scene pixels (may be smaller than the chip at a
            scene edge when the scene is smaller than a chip).
        bands: 1-based band indices.
        stats: per-band normalisation statistics.
        size_px: output chip side in pixels.
        out_shape: resample the window to this ``(h, w)`` (for a scene whose
            pixel size differs from the model's); None = native.

    Returns:
        ``(chip float32 [C, size_px, size_px], valid bool [size_px, size_px])``;
        padding is invalid and 0.
    """
    data, valid = read_window(src, window, bands, out_shape=out_shape)
    chip = normalise(data, valid, stats)
    c, h, w = chip.shape
    if (h, w) == (size_px, size_px):
        return chip, valid
    padded = np.zeros((c, size_px, size_px), np.float32)
    padded_valid = np.zeros((size_px, size_px), bool)
    padded[:, :h, :w] = chip[:, :size_px, :size_px]
    padded_valid[:h, :w] = valid[:size_px, :size_px]
    return padded, padded_valid
