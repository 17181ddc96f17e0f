"""What a resumable checkpoint carries besides the weights: the random
generators' states (torch, NumPy, Python, CUDA) and the reading of a last
checkpoint back. Everything here is saved or restored whole, so a resumed
run draws exactly the numbers the uninterrupted run would have drawn.
"""

from __future__ import annotations

import random

import numpy as np
import torch

from geodet.config import ModelConfig, from_dict
from geodet.errors import GeodetError
from geodet.modeling.modelfile import read_model_file


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def get_rng_state() -> dict:
    """Every global generator's state as tensors and plain values (``weights_only`` loadable)."""
    state = {"torch": torch.get_rng_state(), "numpy": _numpy_state(), "python": _python_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`get_rng_state` returned."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(int(v) for v in internal.tolist()), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _numpy_state() -> dict:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached": float(cached)}


def _python_state() -> list:
    version, internal, gauss = random.getstate()
    return [int(version), torch.tensor(internal, dtype=torch.int64), gauss]


def load_checkpoint_state(path: str) -> dict:
    """The training state of a last checkpoint, read by :func:`geodet.modeling.modelfile.read_model_file`:
    ``model_config``, ``class_names``, ``state_dict`` and ``train_state`` (optimizer, scaler,
    EMA, epoch, step, elapsed_s, best, history, rng)."""
    try:
        raw = read_model_file(path)
    except GeodetError as exc:
        raise GeodetError(f"cannot resume: {exc}") from None
    extra = raw.get("extra") or {}
    if "train_state" not in extra:
        raise GeodetError(f"cannot resume: {path} holds no training state.")
    return {
        "model_config": from_dict(ModelConfig, dict(raw["config"])),
        "class_names": list(raw["class_names"]),
        "state_dict": raw["state_dict"],
        "train_state": extra["train_state"],
    }
