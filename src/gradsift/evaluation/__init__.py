"""Task metrics and selector metrics."""
