"""qd's built-in plugins, installed as the import package `qdplugins`.

They are ordinary plugins: pyproject.toml registers each module under the `qd` entry-point
group exactly as a third-party package would, and qdcore never imports them directly.

- datasets: quickdraw (numpy_bitmap), quickdraw-strokes (simplified ndjson), images
- seeds: training-batch, file-image, prior, sobel-edges, random-pixels, remove-ink
- filters: sharpen, edge-enhance, anti-alias, upscale, invert
- writers: gif, webp, mp4, png-sheet
- generators: complete, morph (a recipe's `mode:`)
- recognizers: cnn (a small Keras CNN trained on the local bitmaps)
- rasterize: strokes -> bitmaps the way Google made numpy_bitmap (not a plugin module)

docs/builtins.md lists every parameter.
"""
