"""The pix2pix GANs in torch: networks, trainer, checkpoints, the test-time self-ensemble, the
trained simulator and the MRI pairs it renders for the denoiser. Imports the layers below only.
"""
