"""Synthetic people: a COCO person-keypoints dataset rendered from the Anny body model.

``hevitpose synth OUT_DIR --num N`` (see ``cli.py`` and ``docs/synth.md``). The body model
(``anny``, Apache-2.0 code, CC0 MakeHuman assets) gives exact 3D keypoints; pyrender on Mesa's
software rasteriser (EGL, no display, no GPU) draws them; a depth and part test gives COCO's
visibility flags.
"""
