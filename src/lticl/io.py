"""Files: model interchange (one .npz per model, readable by any implementation),
the atomic write every file of the library goes through, and the readers every
file it reads goes through: they fail with a ValueError that names the file.

A model file holds `P` and `Q` as full arrays of shape (L, H, d+1, d+1) in the
convention of docs/math.md §2 (e_i ← e_i + Σ_k P_k G Q_k e_i, prediction −y_query), DIAG and GD++
expanded to full matrices, and `variant` as a plain string; a model whose attention
is normalised by the context length (G/n in place of G) also holds `normalised`, a
boolean that is False where absent. Loading never
unpickles and checks that DIAG/GD++ matrices really have their structure.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
import zlib
from pathlib import Path
from typing import Callable

import jax.numpy as jnp
import numpy as np

from .params import MAX_D, MAX_HEADS, MAX_LAYERS, Params, canonical_variant, check_params, full_matrices

# Relative tolerance for "this full matrix has the DIAG structure".
_STRUCTURE_RTOL = 1e-6


def atomic_write(path: str | os.PathLike, write: Callable) -> Path:
    """Call `write(file)` on a temporary file beside `path`, flush it to disk, then
    rename it over `path`: a reader, or a run killed at any instant, sees the old
    file or the new one, never a partial one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent if str(path.parent) else ".", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)  # as open() would create it, not mkstemp's 0600
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    """`text` as UTF-8 at `path`, by `atomic_write`: the file is replaced, never written
    in place, so a run killed mid-write, or a copy that hard-links it, keeps the old one."""
    return atomic_write(path, lambda f: f.write(text.encode()))


def writable_directory(directory: str | os.PathLike) -> Path:
    """`directory`, created if need be, once it is known that files can be written
    there; a ValueError naming it otherwise. Called before any work whose results
    would go there."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=directory, suffix=".probe")
        os.close(fd)
        os.unlink(probe)
    except FileExistsError:
        raise ValueError(f"{directory}: exists and is not a directory; choose another --out") from None
    except NotADirectoryError:
        raise ValueError(f"{directory}: a parent of it is a file, not a directory; choose another --out") from None
    except OSError as e:
        raise ValueError(f"{directory}: cannot write there ({e.strerror or e}); choose another --out") from None
    return directory


def read_arrays(path: str | os.PathLike, max_elements: int) -> dict[str, np.ndarray]:
    """Every array of an .npz file, read without unpickling, each header checked
    (no object dtype, at most `max_elements` elements) before anything is allocated."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file" if not path.exists() else f"{path}: not a file")
    try:
        with zipfile.ZipFile(path) as z:
            arrays = {}
            for member in z.namelist():
                if not member.endswith(".npy"):
                    raise ValueError(f"member {member!r} is not an array")
                with z.open(member) as f:
                    version = np.lib.format.read_magic(f)
                    header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                    shape, _, dtype = header(f)
                    if dtype.hasobject:
                        raise ValueError(f"{member[:-4]!r} holds Python objects, and lticl never unpickles")
                    if int(np.prod(shape, dtype=np.float64)) > max_elements:
                        raise ValueError(f"{member[:-4]!r} declares shape {shape}, more than {max_elements:,} elements")
                with z.open(member) as f:
                    arrays[member[:-4]] = np.lib.format.read_array(f, allow_pickle=False)
            return arrays
    except ValueError as e:
        raise ValueError(f"{path}: not a readable .npz file ({e})") from None
    # zipfile raises NotImplementedError for a damaged header that names an unknown
    # zip version or compression method, and RuntimeError for one whose flags say
    # the member is encrypted.
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, KeyError, NotImplementedError, RuntimeError) as e:
        raise ValueError(f"{path}: not a readable .npz file, or a damaged one ({e or type(e).__name__})") from None


def read_json(path: str | os.PathLike, keys: tuple[str, ...] = ()) -> dict:
    """A JSON object from `path` holding at least `keys`."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not readable JSON ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    missing = [k for k in keys if k not in data]
    if missing:
        raise ValueError(f"{path}: missing {', '.join(missing)}")
    return data


def save_npz(params: Params, path: str | os.PathLike) -> Path:
    """Write `params` to `path` atomically, creating its directory if need be."""
    check_params(params)
    writable_directory(Path(path).parent)
    P, Q = (np.asarray(a) for a in full_matrices(params))
    extra = {"normalised": np.asarray(True)} if params.normalised else {}
    return atomic_write(path, lambda f: np.savez(f, P=P, Q=Q, variant=np.asarray(params.variant), **extra))


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
    """Read a model written by `save_npz` (or by another implementation of the format);
    every problem is a ValueError that names the file."""
    f = read_arrays(path, MAX_LAYERS * MAX_HEADS * (MAX_D + 1) ** 2)
    missing = [k for k in ("P", "Q", "variant") if k not in f]
    if missing:
        raise ValueError(f"{path}: missing array(s) {', '.join(missing)}; expected P, Q and variant")
    P, Q, variant = f["P"], f["Q"], f["variant"]
    if variant.shape != () or variant.dtype.kind not in "US":
        raise ValueError(f"{path}: 'variant' must be a single string, got dtype {variant.dtype} shape {variant.shape}")
    try:
        variant = canonical_variant(str(variant))
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    for name, a in (("P", P), ("Q", Q)):
        if a.ndim != 4 or a.shape[-1] != a.shape[-2] or a.shape[-1] < 2 or 0 in a.shape:
            raise ValueError(f"{path}: {name} must have shape (L, H, d+1, d+1) with L, H, d >= 1, got {a.shape}")
        if a.dtype.kind != "f":
            raise ValueError(f"{path}: {name} must hold floats, got dtype {a.dtype}")
        if not np.isfinite(a).all():
            raise ValueError(f"{path}: {name} holds non-finite values")
    if P.shape != Q.shape:
        raise ValueError(f"{path}: P {P.shape} and Q {Q.shape} must have the same shape")
    normalised = f.get("normalised", np.asarray(False))
    if normalised.shape != () or normalised.dtype != bool:
        raise ValueError(f"{path}: 'normalised' must be a single boolean, got dtype {normalised.dtype} "
                         f"shape {normalised.shape}")
    d = P.shape[-1] - 1
    p, q = (P, Q) if variant == "full" else _structured(variant, P, Q, path)
    try:
        return check_params(Params(variant, d, jnp.asarray(p), jnp.asarray(q), bool(normalised)))
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
