"""vqtrace: a protocol analyser and trace debugger for virtio and vhost-user."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("vqtrace")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"
