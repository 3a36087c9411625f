"""The geometry record every volume carries: spacing, origin and direction in ITK's LPS convention.

Plain numpy, no model and no MRML: the MRML helpers (slicer_ai_mrml) and each model's I/O use the same one.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Geometry:
    spacing: tuple
    origin: tuple
    direction: np.ndarray  # 3x3, LPS

    def equals(self, other: "Geometry", tol=1e-6) -> bool:
        return (np.allclose(self.spacing, other.spacing, atol=tol) and np.allclose(self.origin, other.origin, atol=tol)
                and np.allclose(self.direction, other.direction, atol=tol))
