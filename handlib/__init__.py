"""handlib: a photo of a hand in, that person's own MANO-compatible 3D hand model out."""

__version__ = "0.1.0"
