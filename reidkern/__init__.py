"""reidkern: fused kernels, layers and models for person re-identification."""
__version__ = "0.1.0"
