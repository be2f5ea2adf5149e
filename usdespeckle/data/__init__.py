"""The training data: sources from installed packages, dataset preparation, the imaging fields of
real B-mode scans and the bundle's MONAI transforms. Imports the layers below only.
"""
