"""SRMA-Mamba liver segmentation library: model, I/O, inference, metrics, training. No slicer/Qt."""
from .model import SRMAConfig, SRMAMamba  # noqa: F401
