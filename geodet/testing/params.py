"""What a synthetic scene looks like, apart from its seed: :class:`SceneParams` and its defaults.

Its own module so that the layout planner, the renderer and
:mod:`geodet.testing.synthetic` all read it without importing each other.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional, Tuple

from geodet.errors import GeodetError

#: Default pool side range (pixels) per difficulty.
DEFAULT_OBJECT_SIZE_PX = {"easy": (8.0, 30.0), "hard": (6.0, 20.0)}

#: Default sensor noise sigma (display units) per difficulty.
DEFAULT_NOISE = {"easy": 0.005, "hard": 0.014}

#: Class names per difficulty.
CLASSES = {"easy": ("pool",), "hard": ("pool", "car")}

@dataclass(frozen=True)
class SceneParams:
    """What a synthetic scene looks like, apart from its seed.

    The defaults reproduce ``make_scene(difficulty=...)`` bit for bit: every
    field left at its default draws exactly what the fixed easy and hard
    settings draw. :func:`draw_params` draws them at random per seed.

    Attributes:
        difficulty: base style. "easy": clear pools among blue roofs;
            "hard": hard water colours, tree-occluded pools, blue tarps,
            cars (class "car"), gradient, haze, blur and noise.
        pool_size_px: (min, max) pool side in pixels; None = the difficulty's
            default (:data:`DEFAULT_OBJECT_SIZE_PX`).
        car_width_px, car_length_px: (min, max) car width and length in
            pixels (hard only); None = the fixed layout's ranges (about
            4.4-5.4 x 9-11 px, a little different per place: curbs,
            driveways, parking stalls).
        car_vertical_share: share of cars whose long axis runs along the
            rows (y); None = whatever the street layout gives. Cars are
            turned about their centre to reach it.
        rare_class: a class thinned to ``rare_share`` of all objects (the
            other class is thinned instead when the rare one is already
            scarcer); None = no thinning.
        rare_share: share of ``rare_class`` among all objects, in (0, 0.5).
        contrast: 1 = the palette's colours; below 1 pulls water and pool
            coping towards grass and cars towards asphalt.
        density: pool and car density multiplier (1 = about 150-250 pools
            per 1024 x 1024 px).
        occluded_share: chance that a hard pool gets a tree crown over part
            of it.
        gradient: peak-to-peak illumination gain across the scene (hard).
        haze: (base, amplitude) of the haze veil (hard).
        blur_sigma_px: (min, max) of the gaussian blur sigma (hard).
        noise: gaussian noise sigma in display units [0, 1]; None = the
            difficulty's default (:data:`DEFAULT_NOISE`).
    """

    difficulty: str = "easy"
    pool_size_px: Optional[Tuple[float, float]] = None
    car_width_px: Optional[Tuple[float, float]] = None
    car_length_px: Optional[Tuple[float, float]] = None
    car_vertical_share: Optional[float] = None
    rare_class: Optional[str] = None
    rare_share: Optional[float] = None
    contrast: float = 1.0
    density: float = 1.0
    occluded_share: float = 0.36
    gradient: float = 0.35
    haze: Tuple[float, float] = (0.10, 0.12)
    blur_sigma_px: Tuple[float, float] = (0.6, 0.8)
    noise: Optional[float] = None

    @property
    def hard(self) -> bool:
        return self.difficulty == "hard"

    @property
    def pool_size(self) -> Tuple[float, float]:
        size = DEFAULT_OBJECT_SIZE_PX[self.difficulty] if self.pool_size_px is None else self.pool_size_px
        return float(size[0]), float(size[1])

    @property
    def noise_sigma(self) -> float:
        return DEFAULT_NOISE[self.difficulty] if self.noise is None else float(self.noise)

    def to_dict(self) -> dict:
        """Plain JSON-able values (tuples as lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def check(self) -> None:
        """Raise :class:`GeodetError` on a value :func:`make_scene` cannot draw."""
        if self.difficulty not in DEFAULT_OBJECT_SIZE_PX:
            raise GeodetError(f"difficulty must be 'easy' or 'hard', got {self.difficulty!r}.")
        size = self.pool_size_px
        if size is not None and (len(size) != 2 or not 2 <= size[0] <= size[1]):
            raise GeodetError(f"object_size_px must be (min, max) with 2 <= min <= max, got {size}.")
        for name in ("car_width_px", "car_length_px"):
            rng_ = getattr(self, name)
            if rng_ is not None and (len(rng_) != 2 or not 2 <= rng_[0] <= rng_[1]):
                raise GeodetError(f"{name} must be (min, max) with 2 <= min <= max, got {rng_}.")
        if (self.car_width_px is None) != (self.car_length_px is None):
            raise GeodetError("car_width_px and car_length_px go together: give both or neither.")
        if self.car_width_px is not None and self.car_width_px[1] > self.car_length_px[0]:
            raise GeodetError(f"cars must be longer than wide: {self.car_width_px} x {self.car_length_px} px.")
        if self.density < 0:
            raise GeodetError(f"density must not be negative, got {self.density}.")
        if self.rare_class is not None:
            if self.rare_class not in CLASSES[self.difficulty]:
                raise GeodetError(f"rare_class {self.rare_class!r} is not a class of a {self.difficulty} scene.")
            if self.rare_share is None or not 0 < self.rare_share < 0.5:
                raise GeodetError(f"rare_share must lie in (0, 0.5), got {self.rare_share}.")
        for name in ("car_vertical_share", "occluded_share"):
            v = getattr(self, name)
            if v is not None and not 0 <= v <= 1:
                raise GeodetError(f"{name} must lie in [0, 1], got {v}.")
        if not 0 < self.contrast <= 1:
            raise GeodetError(f"contrast must lie in (0, 1], got {self.contrast}.")
        lo, hi = self.blur_sigma_px
        if not 0 < lo <= hi:
            raise GeodetError(f"blur_sigma_px must be (min, max) with 0 < min <= max, got {self.blur_sigma_px}.")
        if self.noise is not None and self.noise < 0:
            raise GeodetError(f"noise must not be negative, got {self.noise}.")
