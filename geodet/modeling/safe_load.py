"""The one safe way geodet reads a file written by ``torch.save``: weights only, never code.

Model files (:mod:`geodet.modeling.modelfile`), checkpoints (``--resume``)
and backbone weights (:mod:`geodet.modeling.backbones`, :mod:`geodet.modeling.model`)
all go through :func:`load_plain`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Union

import torch

from geodet.errors import GeodetError

#: What torch's weights-only unpickler says (any case) when a file names a Python global (code, a class).
_UNSAFE_MARKER = "global"


def load_plain(path: Union[str, os.PathLike], what: str) -> Any:
    """``torch.load(path, weights_only=True)``, every failure one sentence naming the file.

    Args:
        path: a file written by ``torch.save``.
        what: what the file should be, for messages (``"model file"``, ``"backbone weights file"``).

    Raises:
        GeodetError: missing file; a file whose pickle names Python code or objects (never
            loaded: the weights-only unpickler stops at the first one); a corrupt, truncated or
            foreign file.
    """
    file = Path(path)
    if not file.is_file():
        raise GeodetError(f"the {what} {file} does not exist.")
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - every failure is reported as one sentence
        if _UNSAFE_MARKER in str(exc).lower():
            raise GeodetError(
                f"{file} holds Python code or objects that geodet will not load: a geodet {what} holds "
                "only weights and plain values, so this one was not written by geodet or was altered."
            ) from None
        raise GeodetError(f"{file} is not a readable {what}: it is corrupt, truncated or of another kind.") from None
