"""What a result was computed with: library versions and the machine."""

from __future__ import annotations

import platform
import sys
from importlib.metadata import PackageNotFoundError, version

import jax

_PACKAGES = ("lticl", "jax", "jaxlib", "numpy", "optax")


def environment() -> dict:
    def v(pkg):
        try:
            return version(pkg)
        except PackageNotFoundError:
            return None

    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": {p: v(p) for p in _PACKAGES},
        "jax_backend": jax.default_backend(),
        "jax_devices": [str(dev) for dev in jax.devices()],
        "x64": bool(jax.config.jax_enable_x64),
    }
