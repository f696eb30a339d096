"""gradsift: pick the fine-tuning data worth training on."""

__version__ = "0.1.0"
