"""Detection: scenes and a model in, georeferenced boxes out.

``detector`` (a loaded model and what its outputs say about it), ``predict``
(one scene's chips through the network), ``tasks`` (a scene as a unit of work,
the runner interface), ``scenes`` (one task's detections, mosaic halos, chip
blocks), ``jobs`` (the resumable job folder), ``cluster`` (Dask, loaded
lazily), ``onnx_runtime`` (an ONNX export through onnxruntime),
``detection`` (``detect`` and ``detect_to_file``). Imports ``core``, ``io``
and ``modeling``.
"""
