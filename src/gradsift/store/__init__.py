"""Feature files on disk: memmapped rows, a done-mask and metadata."""
