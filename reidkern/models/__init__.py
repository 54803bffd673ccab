"""reidkern.models: backbones, text encoder and the five paper models.

Submodules are imported on use (``import reidkern.models.backbones``) so that optional
extras (onnx, transformers) are needed only by the parts that use them.
"""
