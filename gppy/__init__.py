"""gpPy: the automatic data pipeline of the IMSNG/GECKO telescope network."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("gppy")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0+unknown"
