"""Files shipped with Engram (grammar, anchors, styles, evaluation sets), read through
``store.paths.asset``."""
