"""geodet's command line, installed under the import name ``geodet_cli``.

Each command lives in its own module and keeps heavy imports (torch,
rasterio, geopandas) inside its body so ``geodet --help`` stays fast.
"""
