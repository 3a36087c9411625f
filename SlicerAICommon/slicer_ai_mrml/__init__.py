"""MRML-level helpers shared by the modules' logics: numpy <-> volume nodes with exact geometry,
labelmaps into segmentation nodes with terminology, result tables, and all-or-nothing scene edits.

Uses only MRML and the Segmentations/Terminologies module logics (no Qt, no slicer.app), so it runs
the same in the Slicer application and on slicer-core (PyPI) with trame_slicer.core.SlicerApp.
"""
from .nodes import (SceneTransaction, add_table, array_from_volume_node, geometry_from_volume_node,  # noqa: F401
                    import_mask_as_segment, mask_from_segmentation, scalar_volume_from_array,
                    set_volume_geometry)
