"""cvlth: lottery tickets in pre-trained computer-vision models."""

__version__ = "0.1.0"
