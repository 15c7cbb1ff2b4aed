"""The installed package's version, from its metadata (a module of its own, so that any wing can import it)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("streamproc")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
