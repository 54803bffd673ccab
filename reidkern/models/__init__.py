"""reidkern.models: backbones, text encoder and the five paper models.

Submodules are imported on use (``import reidkern.models.backbones``) so that optional
extras (onnx, transformers) are needed only by the parts that use them.
"""

_LAZY = {"LGUR": "lgur", "LGUREager": "lgur_eager", "CAL": "cal", "CALEager": "cal_eager",
         "DPTI": "dpti", "DPTIEager": "dpti_eager",
         "LATransformer": "la_transformer", "LATransformerEager": "la_transformer_eager",
         "LF2": "lf2", "LF2Eager": "lf2_eager"}


def __getattr__(name):  # paper models on first use: ``reidkern.models.LGUR`` imports transformers lazily
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
