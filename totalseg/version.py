"""This package's version, and the official version whose behaviour (and outputs) it reproduces."""
__version__ = "0.1.0"
OFFICIAL_VERSION = "2.18.0"
