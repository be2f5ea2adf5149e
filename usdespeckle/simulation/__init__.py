"""Ultrasound image formation: speckle models, the low-level map, the probe's PSF, physics-based
B-mode (pymust), phantoms and the randomised acquisition chain the denoiser trains through.
Imports runtime/ only.
"""
