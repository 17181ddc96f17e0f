"""Files and URLs: what the user named, read and written.

``sources`` (scene references, GDAL settings, redaction), ``raster`` (scenes and
chips), ``vector`` (reading labels), ``formats`` (writing detections, one place
per output format), ``outputs`` (every write: staged, published atomically).
Imports ``core`` only. Always imported by its full name, ``geodet.io``; it
never shadows the standard library's ``io`` (geodet uses absolute imports).
"""
