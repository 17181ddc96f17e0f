"""Fake-but-exact data for testing detection pipelines.

:mod:`geodet.testing.synthetic` draws deterministic aerial scenes (GeoTIFF-ready
arrays) together with their exact labels, so a test, a benchmark or a demo can
check detections against a truth that is known to the sub-pixel.

Why it ships inside the package rather than under ``tests/`` (where torchgeo
keeps its fake data): besides the test suite, the benchmarks (``bench/``), the
sample-data script (``sample_data/make_sample_data.py``) and the default-model
script (``scripts/make_default_model.py``) build their scenes with it and must
work from an installed wheel; users may also call it to test their own
pipelines end to end. It is kept in its own subpackage so that nothing in the
detection and training path imports it: ``geodet`` itself never depends on
``geodet.testing``.
"""
