"""Device-side runners: single files (stdlib + numpy + one runtime) that never import edgekit.

``detcore.py`` is pushed beside every runner; the host imports the same file, so decoding and NMS
have one implementation on both sides.
"""
