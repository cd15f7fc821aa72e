"""fif: FoMo-in-Flux."""
__version__ = "0.1.0"
