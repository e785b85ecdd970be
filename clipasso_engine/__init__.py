"""CLIPasso: abstract line sketches of an object from a photo, as editable cubic Bezier strokes."""

__version__ = "0.1.0"
