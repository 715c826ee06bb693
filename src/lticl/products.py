"""Every matrix product of lticl, in the precision of its inputs on every backend.

JAX's default precision lets a GPU compute float32 products in TF32 (a 10-bit
mantissa, about three significant digits). That moves the forms of a model apart,
and puts a floor under the loss of the noiseless settings, where the targets
themselves (y = x·w) are products: BENCHMARKS.md ("One GPU") has the measurement.
On the CPU the precision changes nothing, bit for bit.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

HIGHEST = jax.lax.Precision.HIGHEST

einsum = partial(jnp.einsum, precision=HIGHEST)
matmul = partial(jnp.matmul, precision=HIGHEST)
