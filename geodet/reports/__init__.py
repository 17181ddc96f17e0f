"""What a person reads: metrics, figures, maps and model descriptions.

``evaluation``, ``display`` (what figures and maps share: bands to show,
stretches, colours, frames in a CRS), ``plot`` (matplotlib figures),
``webmap`` (folium maps), ``info``. Imports every package below it.
"""
