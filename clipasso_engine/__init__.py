"""CLIPasso: abstract line sketches of an object from a photo, as editable cubic Bezier strokes.

    from clipasso_engine import sketch, make_config
    result = sketch("cat.jpg", make_config("fast", num_strokes=16))
    result.save("cat.svg")                      # the reference's 224 x 224 SVG
    result.save("cat_image.svg", space="image") # the same strokes over the photo's pixels

Heavy modules (torch, open_clip) are imported on first use, so `import clipasso_engine` stays cheap.
"""

__version__ = "0.1.0"

from .config import PRESETS, Config, make_config  # noqa: E402
from .errors import EngineError  # noqa: E402


def __getattr__(name):
    if name in ("sketch", "sketch_many", "prepare", "Sketch"):
        from . import sketcher
        return getattr(sketcher, name)
    raise AttributeError(f"module 'clipasso_engine' has no attribute {name!r}")


__all__ = ["sketch", "sketch_many", "prepare", "Sketch", "Config", "make_config", "PRESETS", "EngineError", "__version__"]
