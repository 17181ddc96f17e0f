"""The network and the files that hold it.

``anchors`` and ``assign`` (anchors, fitting them, which anchor learns which
box), ``backbones``, ``model`` (the RetinaNet), ``modelfile`` (the model-file
format), ``onnx_export`` (the ONNX file format: writing it, reading its
metadata back), ``device``. Imports ``core`` and ``io``.
"""
