"""Where models train: the local devices, and a group of models spread over them."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec


def use_cpu_cores(count: int | None = None) -> int:
    """Expose `count` (default: every core) CPU devices to JAX, so that the models
    of a group train on all cores at once (see `spread`). It has to run before JAX's
    first operation; after that it changes nothing. Returns the number of local
    devices.

    It also lets a spread group wait an hour, not XLA's default, for a core that is
    late at a collective: on a machine busy with other work the default aborts the
    whole process. XLA reads XLA_FLAGS at its first operation; a value you set
    there wins."""
    flag = "--xla_cpu_collective_call_terminate_timeout_seconds"
    if flag not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flag}=3600".strip()
    try:
        jax.config.update("jax_num_cpu_devices", count or os.cpu_count() or 1)
    except RuntimeError:  # the backend is already up
        pass
    return jax.local_device_count()


def spread(tree, k: int):
    """The K models on the leading axis placed across the local devices: padded
    with copies of the last model to a multiple of the devices used, so that one
    compiled call runs on every core. Each model's arithmetic is unchanged."""
    devices = jax.local_devices()[:k]
    if len(devices) < 2:
        return tree
    pad = -k % len(devices)
    tree = jax.tree.map(lambda a: jnp.concatenate([a, jnp.repeat(a[-1:], pad, axis=0)]), tree) if pad else tree
    return jax.device_put(tree, NamedSharding(Mesh(np.array(devices), ("models",)), PartitionSpec("models")))


def gather(tree, k: int):
    """The first K models of a spread tree, back on one device: what follows is per
    model, and XLA's CPU collectives (which a spread evaluation would need) can
    deadlock."""
    return jax.device_put(jax.tree.map(lambda a: a[:k], tree), jax.local_devices()[0])
