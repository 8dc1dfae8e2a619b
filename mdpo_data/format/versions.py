"""Installed versions of the libraries whose code shapes output bytes (recorded and hashed)."""

from __future__ import annotations

from importlib import metadata


def library_versions(*names: str) -> dict[str, str]:
    """Installed versions of the libraries that shape the output bytes."""
    names = names or ("mdpo-toolkit", "datasets", "pyarrow", "pillow", "albumentations", "torch",
                      "torchvision", "numpy")
    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found
