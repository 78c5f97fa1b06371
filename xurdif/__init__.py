"""xurdif: train compact diffusion models on your own images and render with them."""

__version__ = "0.1.0"
