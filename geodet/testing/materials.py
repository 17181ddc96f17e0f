"""Materials of the synthetic scenes: (red, green, blue, near-infrared) colours in ``[0, 1]``.

Part of :mod:`geodet.testing.synthetic` (planned by ``_layout``, drawn by ``render_scene``).
"""

from __future__ import annotations

from typing import Tuple

import numpy as np

Rect = Tuple[float, float, float, float]  # x0, y0, x1, y1 in scene pixels

# --------------------------------------------------------------------------- colours
# Each material is (red, green, blue, near-infrared) in [0, 1].
GRASS = np.array([0.30, 0.42, 0.20, 0.52], np.float32)
DRY = np.array([0.56, 0.52, 0.38, 0.40], np.float32)
SOIL = np.array([0.55, 0.45, 0.34, 0.33], np.float32)
ASPHALT = np.array([0.37, 0.37, 0.38, 0.22], np.float32)
PARKING = np.array([0.30, 0.30, 0.31, 0.20], np.float32)
CONCRETE = np.array([0.72, 0.71, 0.68, 0.50], np.float32)
PAINT = np.array([0.88, 0.84, 0.62, 0.60], np.float32)
TREE = np.array([0.14, 0.27, 0.11, 0.60], np.float32)
RIM = np.array([0.88, 0.87, 0.82, 0.62], np.float32)
HAZE = np.array([0.78, 0.80, 0.84, 0.60], np.float32)
ROOFS = np.array(
    [
        [0.64, 0.32, 0.24, 0.42],  # terracotta
        [0.58, 0.28, 0.22, 0.40],  # red
        [0.46, 0.34, 0.26, 0.36],  # brown
        [0.56, 0.56, 0.57, 0.45],  # grey
        [0.31, 0.31, 0.33, 0.26],  # dark grey
        [0.78, 0.72, 0.62, 0.58],  # beige
        [0.86, 0.86, 0.84, 0.70],  # white
    ],
    np.float32,
)
BLUE_ROOFS = np.array([[0.22, 0.38, 0.62, 0.30], [0.30, 0.50, 0.72, 0.34]], np.float32)
WATER_EASY = np.array([[0.20, 0.64, 0.86, 0.04], [0.30, 0.76, 0.90, 0.05], [0.16, 0.52, 0.82, 0.03]], np.float32)
WATER_HARD = np.array(
    [
        [0.55, 0.68, 0.72, 0.12],  # pale
        [0.33, 0.47, 0.41, 0.10],  # greenish
        [0.14, 0.26, 0.40, 0.04],  # dark blue
        [0.40, 0.55, 0.58, 0.08],  # grey teal
        [0.26, 0.62, 0.80, 0.05],  # clear cyan
    ],
    np.float32,
)
TARPS = np.array([[0.18, 0.36, 0.78, 0.25], [0.26, 0.50, 0.86, 0.30], [0.20, 0.58, 0.80, 0.28]], np.float32)
CARS = np.array(
    [
        [0.88, 0.88, 0.88, 0.70],  # white
        [0.66, 0.67, 0.69, 0.55],  # silver
        [0.44, 0.45, 0.46, 0.35],  # grey
        [0.10, 0.10, 0.11, 0.10],  # black
        [0.62, 0.12, 0.10, 0.35],  # red
        [0.14, 0.24, 0.55, 0.20],  # blue
        [0.18, 0.30, 0.20, 0.22],  # dark green
        [0.72, 0.66, 0.52, 0.50],  # beige
    ],
    np.float32,
)
CAR_CUMULATIVE = np.cumsum([0.24, 0.2, 0.16, 0.18, 0.07, 0.07, 0.04, 0.04])  # colour frequencies
SHADOW = np.array([0.50, 0.52, 0.56, 0.62], np.float32)  # multiplicative darkening


def toward(colour: np.ndarray, background: np.ndarray, contrast: float) -> np.ndarray:
    """``colour`` [C] pulled towards ``background`` [C]: ``contrast`` 1 keeps it, 0 gives the background."""
    return (background + contrast * (colour - background)).astype(np.float32)
