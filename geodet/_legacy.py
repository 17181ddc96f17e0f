"""The module paths of geodet 0.1's flat layout, kept importable for one release.

``import geodet.vector`` or ``from geodet.detection import detect`` still work:
a meta-path finder (installed by ``geodet/__init__.py``) answers the old name
with the module that holds its code now, and warns once per name with a
:class:`DeprecationWarning` that names the new home. A module whose code was
split (``geodet.vector``, ``geodet.detection``, ``geodet.export``,
``geodet.anchors``, ``geodet.modelfile``) is answered by a small module that
looks each name up in the new homes in turn.

``geodet.plot`` is public API (``geodet.plot.explore`` in the README): it is
answered by :mod:`geodet.reports.plot` without a warning.

Remove this module, and its line in ``geodet/__init__.py``, in the release after next.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import types
import warnings
from typing import Dict, Tuple

#: old module name -> the modules that hold its names now (looked up in this order).
MOVED: Dict[str, Tuple[str, ...]] = {
    "geodet.windows": ("geodet.core.windows",),
    "geodet.boxes": ("geodet.core.boxes",),
    "geodet.stitch": ("geodet.core.stitch",),
    "geodet.mosaic": ("geodet.core.mosaic",),
    "geodet.sources": ("geodet.io.sources",),
    "geodet.raster": ("geodet.io.raster",),
    "geodet.vector": ("geodet.io.vector", "geodet.io.formats"),
    "geodet.outputs": ("geodet.io.outputs",),
    "geodet.anchors": ("geodet.modeling.anchors", "geodet.learning.anchor_fit"),
    "geodet.assign": ("geodet.modeling.assign",),
    "geodet.backbones": ("geodet.modeling.backbones",),
    "geodet.model": ("geodet.modeling.model",),
    "geodet.modelfile": ("geodet.modeling.modelfile", "geodet.modeling.safe_load"),
    "geodet.device": ("geodet.modeling.device",),
    "geodet.export": ("geodet.modeling.onnx_export", "geodet.inference.onnx_runtime", "geodet.inference.detector"),
    "geodet.tiling": ("geodet.learning.tiling",),
    "geodet.dataset": ("geodet.learning.dataset",),
    "geodet.training": ("geodet.learning.training",),
    "geodet.train_state": ("geodet.learning.train_state",),
    "geodet.distributed": ("geodet.learning.distributed",),
    "geodet.detection": (
        "geodet.inference.detection", "geodet.inference.detector", "geodet.inference.scenes",
        "geodet.inference.tasks",
    ),
    "geodet.predict": ("geodet.inference.predict",),
    "geodet.jobs": ("geodet.inference.jobs",),
    "geodet.cluster": ("geodet.inference.cluster",),
    "geodet.evaluation": ("geodet.reports.evaluation",),
    "geodet.plot": ("geodet.reports.plot",),
    "geodet.webmap": ("geodet.reports.webmap",),
    "geodet.info": ("geodet.reports.info",),
    "geodet.testing._layout": ("geodet.testing.layout",),
    "geodet.testing._render": ("geodet.testing.render",),
    "geodet.testing._materials": ("geodet.testing.materials",),
}

#: old names that are public API under their old name: answered without a warning.
PUBLIC = frozenset({"geodet.plot"})


class _MergedModule(types.ModuleType):
    """An old module whose names now live in several modules: each looked up on first use."""

    def __init__(self, name: str, homes: Tuple[str, ...]):
        super().__init__(name, f"moved to {', '.join(homes)}")
        self.__homes = homes

    def __getattr__(self, attr: str):
        if attr.startswith("__"):
            raise AttributeError(attr)
        for home in self.__homes:
            module = importlib.import_module(home)
            if hasattr(module, attr):
                return getattr(module, attr)
        raise AttributeError(f"module {self.__name__!r} (now {', '.join(self.__homes)}) has no attribute {attr!r}")

    def __dir__(self):
        names = set()
        for home in self.__homes:
            names.update(n for n in dir(importlib.import_module(home)) if not n.startswith("_"))
        return sorted(names)


class LegacyFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Answers the old module names of :data:`MOVED`."""

    def __init__(self):
        self._specs = {}

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        homes = MOVED[spec.name]
        if spec.name not in PUBLIC:
            warnings.warn(
                f"{spec.name} moved to {' and '.join(homes)}; the old name goes away in the next release.",
                DeprecationWarning, stacklevel=_importer_stacklevel(),
            )
        if len(homes) == 1:
            module = importlib.import_module(homes[0])  # the module itself: patching the old name patches it
            self._specs[spec.name] = module.__spec__  # importlib sets __spec__ to the old name's; put it back after
            return module
        return _MergedModule(spec.name, homes)

    def exec_module(self, module):
        real_spec = self._specs.pop(module.__spec__.name, None)
        if real_spec is not None:
            module.__spec__ = real_spec


def _importer_stacklevel() -> int:
    """The stack level of the first frame outside the import machinery (the ``import`` line)."""
    frame, level = sys._getframe(1), 1
    while frame is not None and (frame.f_code.co_filename.startswith("<frozen") or frame.f_globals.get("__name__") == __name__):
        frame, level = frame.f_back, level + 1
    return level


def install() -> None:
    """Put the finder on ``sys.meta_path`` (once)."""
    if not any(isinstance(f, LegacyFinder) for f in sys.meta_path):
        sys.meta_path.append(LegacyFinder())
