"""Where models train: the backend and its devices, how many models one compiled
call may hold, and a group of models spread over the devices."""

from __future__ import annotations

import importlib.util
import os
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

if TYPE_CHECKING:
    from .config import TrainConfig

# Share of a device's memory that the models of one compiled call may take.
MEMORY_SHARE = 0.5


def use_cpu_cores(count: int | None = None) -> int:
    """Expose `count` (default: every core) CPU devices to JAX, so that the models
    of a group train on all cores at once (see `spread`). It configures the CPU
    backend only: where JAX computes on a GPU, the GPU's devices are the local ones.
    It has to run before JAX's first operation; after that it changes nothing.
    Returns the number of local devices.

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


def use_compilation_cache() -> str | None:
    """Keep compiled programs on disk (JAX's persistent compilation cache), so that a
    later run of the same shapes skips XLA's compilation: in $LTICL_COMPILATION_CACHE,
    default ~/.cache/lticl/xla; "off" turns it off. The processes this one starts
    (Ray's local workers, scripts) inherit it through JAX's own variables. Returns the
    directory used."""
    path = os.environ.get("LTICL_COMPILATION_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "lticl", "xla"))
    if path.strip().lower() in ("", "off"):
        return None
    settings = {"jax_compilation_cache_dir": path, "jax_persistent_cache_min_compile_time_secs": 0.2}
    for name, value in settings.items():
        jax.config.update(name, value)
        os.environ[name.upper()] = str(value)
    return path


def spread(tree, k: int):
    """The K models on the leading axis placed across the local devices: padded
    with copies of the last model to a multiple of the devices used, so that one
    compiled call runs on every core. A model's rounding depends on the device it lands
    on (measured), and a group of one stays on one device unsharded: a config trained
    alone, or at another place in its group, ends on other parameters
    (docs/log/2026-12-05-hour.md)."""
    pad, sharding = placement(k)
    if sharding is None:
        return tree
    tree = jax.tree.map(lambda a: jnp.concatenate([a, jnp.repeat(a[-1:], pad, axis=0)]), tree) if pad else tree
    return jax.device_put(tree, sharding)


def placement(k: int) -> tuple[int, NamedSharding | None]:
    """How `spread` places K models: the copies it pads them with, and their sharding
    over the local devices (None: one device, unsharded)."""
    devices = jax.local_devices()[:k]
    if len(devices) < 2:
        return 0, None
    return -k % len(devices), NamedSharding(Mesh(np.array(devices), ("models",)), PartitionSpec("models"))


def gather(tree, k: int):
    """The first K models of a spread tree, back on one device: what follows is per
    model. They pass through the host: cutting off the padding on the devices is an
    all-gather, and XLA's CPU collectives can deadlock (one core waits for ever at
    the rendezvous while another thread computes)."""
    host = jax.device_get(tree)
    return jax.device_put(jax.tree.map(lambda a: a[:k], host), jax.local_devices()[0])


def describe() -> str:
    """The backend JAX computes on and its devices, e.g. 'gpu: 1 × NVIDIA H200'."""
    devices = jax.local_devices()
    kinds = sorted({d.device_kind for d in devices})
    return f"{jax.default_backend()}: {len(devices)} × {', '.join(kinds)}"


def cpu_fallback_warning() -> str | None:
    """A warning when a CUDA plugin of JAX is installed but JAX computes on the CPU
    (no GPU found, or the plugin failed to load): never train on the CPU silently."""
    installed = any(importlib.util.find_spec(m) is not None for m in ("jax_cuda12_plugin", "jax_cuda13_plugin"))
    if installed and jax.default_backend() == "cpu":
        return "JAX's CUDA plugin is installed but JAX found no GPU: training runs on the CPU"
    return None


def device_memory() -> int | None:
    """Bytes of memory of the first local device, where the backend reports it (GPUs
    do; the CPU does not, and its memory bounds nothing a group of the grid needs)."""
    stats = jax.local_devices()[0].memory_stats()
    return int(stats["bytes_limit"]) if stats and "bytes_limit" in stats else None


def model_bytes(config: TrainConfig) -> int:
    """A generous estimate of one model's device memory in a training step, float32:
    its batch of sequences and, per layer, the (D, D) matrices the backward pass keeps,
    and the bank of a stratified config."""
    D = config.d + 1
    return 4 * (config.batch * (config.n * D + config.layers * 8 * D * D) + config.stratum * (config.n + 2) * D)


def plan_calls(configs: list[TrainConfig], memory: int | None) -> list[list[int]]:
    """Configs of one program split into compiled calls whose models (the seeds of
    their configs) fit in MEMORY_SHARE of `memory` bytes (None: no limit), in order;
    a config too large alone gets a call of its own."""
    if memory is None:
        return [list(range(len(configs)))] if configs else []
    calls, models, room = [], 0, MEMORY_SHARE * memory
    for i, c in enumerate(configs):
        need = c.seeds * model_bytes(c)
        if calls and models + need <= room:
            calls[-1].append(i)
            models += need
        else:
            calls.append([i])
            models = need
    return calls
