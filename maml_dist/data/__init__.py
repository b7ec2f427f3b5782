"""Data sets read from disk (host side, numpy)."""
