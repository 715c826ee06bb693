"""Files: model interchange (one .npz per model, readable by any implementation),
and the atomic write every file of the library goes through.

A model file holds `P` and `Q` as full arrays of shape (L, H, d+1, d+1) in the
convention of docs/math.md §2 (e_i ← e_i + Σ_k P_k G Q_k e_i, prediction −y_query), DIAG and GD++
expanded to full matrices, and `variant` as a plain string. Loading never
unpickles and checks that DIAG/GD++ matrices really have their structure.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

import jax.numpy as jnp
import numpy as np

from .params import Params, canonical_variant, check_params, full_matrices

# Relative tolerance for "this full matrix has the DIAG structure".
_STRUCTURE_RTOL = 1e-6


def atomic_write(path: str | os.PathLike, write: Callable) -> Path:
    """Call `write(file)` on a temporary file beside `path`, flush it to disk, then
    rename it over `path`: a reader, or a run killed at any instant, sees the old
    file or the new one, never a partial one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent if str(path.parent) else ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_npz(params: Params, path: str | os.PathLike) -> Path:
    """Write `params` to `path` atomically."""
    check_params(params)
    P, Q = (np.asarray(a) for a in full_matrices(params))
    return atomic_write(path, lambda f: np.savez(f, P=P, Q=Q, variant=np.asarray(params.variant)))


def _structured(variant: str, P: np.ndarray, Q: np.ndarray, path) -> tuple[np.ndarray, np.ndarray]:
    """Recover (p, q) scalars of a DIAG/GD++ model, checking the matrices have that form."""
    d = P.shape[-1] - 1
    p = np.stack([P[..., 0, 0], P[..., d, d]], axis=-1)
    q = np.stack([Q[..., 0, 0], Q[..., d, d]], axis=-1)
    if variant == "gdpp":
        q = q[..., :1]
    rebuilt = Params(variant, d, jnp.asarray(p), jnp.asarray(q))
    for name, stored, want in zip("PQ", (P, Q), full_matrices(rebuilt)):
        want = np.asarray(want)
        scale = max(np.abs(stored).max(), np.finfo(stored.dtype).tiny)
        if np.abs(stored - want).max() > _STRUCTURE_RTOL * scale:
            shape = "diag(q_x I, 0)" if (variant, name) == ("gdpp", "Q") else f"diag({name.lower()}_x I, {name.lower()}_y)"
            raise ValueError(f"{path}: {name} is not of the {variant} form {shape} in every layer and head")
    return p, q


def load_npz(path: str | os.PathLike) -> Params:
    """Read a model written by `save_npz` (or by another implementation of the format)."""
    try:
        f = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise
    except Exception as e:  # not a zip / not an npz
        raise ValueError(f"{path}: not a readable .npz file ({e})") from None
    with f:
        missing = [k for k in ("P", "Q", "variant") if k not in f.files]
        if missing:
            raise ValueError(f"{path}: missing array(s) {', '.join(missing)}; expected P, Q and variant")
        try:
            P, Q, variant = f["P"], f["Q"], f["variant"]
        except ValueError as e:  # object arrays need pickle, which we refuse
            raise ValueError(f"{path}: cannot read arrays without unpickling ({e})") from None
    if variant.shape != () or variant.dtype.kind not in "US":
        raise ValueError(f"{path}: 'variant' must be a single string, got dtype {variant.dtype} shape {variant.shape}")
    variant = canonical_variant(str(variant))
    for name, a in (("P", P), ("Q", Q)):
        if a.ndim != 4 or a.shape[-1] != a.shape[-2] or a.shape[-1] < 2 or 0 in a.shape:
            raise ValueError(f"{path}: {name} must have shape (L, H, d+1, d+1) with L, H, d >= 1, got {a.shape}")
        if a.dtype.kind != "f":
            raise ValueError(f"{path}: {name} must hold floats, got dtype {a.dtype}")
        if not np.isfinite(a).all():
            raise ValueError(f"{path}: {name} holds non-finite values")
    if P.shape != Q.shape:
        raise ValueError(f"{path}: P {P.shape} and Q {Q.shape} must have the same shape")
    d = P.shape[-1] - 1
    if variant == "full":
        p, q = P, Q
    else:
        p, q = _structured(variant, P, Q, path)
    return check_params(Params(variant, d, jnp.asarray(p), jnp.asarray(q)))
