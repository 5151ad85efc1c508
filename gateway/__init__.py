"""gasguard: the kitchen gas-safety controller that runs on the Raspberry Pi."""

from importlib.metadata import PackageNotFoundError, version

try:
    # pyproject.toml owns the number; the installed package's metadata carries it.
    __version__ = version("gasguard")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "unknown"
