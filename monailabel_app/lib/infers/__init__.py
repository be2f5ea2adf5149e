"""Infer tasks of the SlicerDespeckle MONAI Label app."""

from lib.infers.despeckle import DespeckleInferTask
from lib.infers.simulate import SimulateInferTask

__all__ = ["DespeckleInferTask", "SimulateInferTask"]
