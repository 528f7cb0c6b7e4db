"""msaflow: reproduce, ablate, tune and compare multimodal sentiment analysis models."""

__version__ = "0.1.0"
