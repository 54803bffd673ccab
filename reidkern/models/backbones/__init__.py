"""Backbones with the parameter names of the checkpoints users already have.

* ``resnet50`` — torchvision names; stage feature maps (DPTI, LF2, LGUR's ResNet variant).
* ``two_stream_resnet50`` — visible/infrared-specific early stages, shared rest (CAL).
* ``vit_base_patch16``, ``deit_small_distilled_patch16`` — timm names; overlapping patches,
  interpolated position embeddings, truncated depth (LA-Transformer, LGUR).
* ``osnet_x0_25`` — torchreid names; loads the BN-folded ONNX ReID model or torchreid weights.

All weights come from local files or state_dicts (``reidkern.models.weights``); nothing is
downloaded.
"""
from .osnet import OSNet, osnet_x0_25
from .resnet import ResNet50, resnet50
from .two_stream import TwoStreamResNet50, two_stream_resnet50
from .vit import VisionTransformer, ViTOutput, deit_small_distilled_patch16, resize_pos_embed, vit_base_patch16

__all__ = [
    "OSNet",
    "osnet_x0_25",
    "ResNet50",
    "resnet50",
    "TwoStreamResNet50",
    "two_stream_resnet50",
    "VisionTransformer",
    "ViTOutput",
    "vit_base_patch16",
    "deit_small_distilled_patch16",
    "resize_pos_embed",
]
