"""Pure arithmetic of the pipeline: arrays in, arrays out, no file opened.

``windows`` (chip grids), ``boxes`` (the affine: world <-> pixel), ``stitch``
(cross-chip merging in scene pixels), ``mosaic`` (scenes of one mosaic and who
owns a shared area). Imports nothing else of geodet but ``errors``/``config``.
"""
