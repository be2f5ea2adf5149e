"""The SlicerDespeckle MONAI Label app's task code (MONAI Label puts the app folder on sys.path)."""
