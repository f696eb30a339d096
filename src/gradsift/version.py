"""gradsift's version, on the ground floor so that any module can record it without importing the package's
public API (`gradsift/__init__.py`, which sits above every stage)."""

__version__ = "0.1.0"
