"""Helpers of the SlicerDespeckle module that need neither Qt nor the Slicer application."""
