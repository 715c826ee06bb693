import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import gd_like_params, slow_unless

import lticl
from lticl.params import full_matrices


@pytest.mark.parametrize("variant,dtype", slow_unless(
    [(v, t) for v in lticl.VARIANTS for t in (jnp.float32, jnp.float64)],
    {("full", jnp.float32), ("gdpp", jnp.float64)}))
def test_round_trip(tmp_path, variant, dtype):
    params = gd_like_params(jax.random.key(0), variant, 3, 4, 2, 10, dtype)
    path = lticl.save_npz(params, tmp_path / "model.npz")
    with np.load(path, allow_pickle=False) as f:
        assert sorted(f.files) == ["P", "Q", "variant"]
        assert f["P"].shape == f["Q"].shape == (3, 2, 5, 5) and str(f["variant"]) == variant
    loaded = lticl.load_npz(path)
    assert loaded.variant == variant and loaded.d == 4
    for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(params)):
        np.testing.assert_array_equal(a, b)
    t = lticl.sample_tasks(jax.random.key(1), "uniform:1", 8, 10, 4, dtype)
    np.testing.assert_array_equal(lticl.predict(loaded, t.x, t.y, t.x_query), lticl.predict(params, t.x, t.y, t.x_query))


def write(path, **arrays):
    np.savez(path, **arrays)
    return path


def good_arrays(variant="diag"):
    P, Q = full_matrices(lticl.init_params(jax.random.key(0), variant, 2, 3, scale=1.0))
    return dict(P=np.asarray(P), Q=np.asarray(Q), variant=np.asarray(variant))


@pytest.mark.parametrize(
    "change,match",
    [
        (dict(P=None), "missing array"),
        (dict(variant=None), "missing array"),
        (dict(variant=np.asarray("attention")), "unknown variant"),
        (dict(P=np.zeros((2, 4, 4))), r"shape \(L, H, d\+1, d\+1\)"),
        (dict(P=np.zeros((2, 1, 4, 5))), r"shape \(L, H, d\+1, d\+1\)"),
        (dict(Q=np.zeros((3, 1, 4, 4))), "same shape"),
        (dict(P=np.full((2, 1, 4, 4), np.nan)), "non-finite"),
        (dict(P=np.ones((2, 1, 4, 4))), "not of the diag form"),
        (dict(P=np.zeros((2, 1, 4, 4), dtype=np.int64)), "floats"),
        (dict(variant=np.asarray(["diag", "full"])), "single string"),
        (dict(variant=np.asarray({"a": 1}, dtype=object)), "never unpickles"),
    ],
)
def test_bad_files_are_refused(tmp_path, change, match):
    arrays = good_arrays() | change
    path = write(tmp_path / "m.npz", **{k: v for k, v in arrays.items() if v is not None})
    with pytest.raises(ValueError, match=match):
        lticl.load_npz(path)


def test_gdpp_needs_zero_q_y(tmp_path):
    arrays = good_arrays("diag")  # diag with q_y ≠ 0 is not a GD++ model
    arrays["variant"] = np.asarray("gdpp")
    with pytest.raises(ValueError, match="gdpp form"):
        lticl.load_npz(write(tmp_path / "m.npz", **arrays))


def test_full_model_from_another_implementation(tmp_path):
    rng = np.random.default_rng(0)
    P, Q = rng.normal(size=(2, 3, 5, 5)) * 0.01, rng.normal(size=(2, 3, 5, 5)) * 0.01
    params = lticl.load_npz(write(tmp_path / "m.npz", P=P, Q=Q, variant=np.asarray("full")))
    assert (params.layers, params.heads, params.d) == (2, 3, 4)
    np.testing.assert_array_equal(params.p, P)


def test_not_an_npz(tmp_path):
    (tmp_path / "x.npz").write_text("hello")
    with pytest.raises(ValueError, match="not a readable .npz"):
        lticl.load_npz(tmp_path / "x.npz")


def test_a_file_whose_flags_say_encrypted_is_refused_by_name(tmp_path):
    """zipfile raises RuntimeError for a member flagged as encrypted; the reader says
    which file is damaged instead (found by tests/test_fuzz.py)."""
    path = lticl.save_npz(lticl.gd_init(jax.random.key(0), "diag", 2, 3), tmp_path / "m.npz")
    data = bytearray(path.read_bytes())
    central = data.index(b"PK\x01\x02")
    data[central + 8] |= 1  # general purpose flag bit 0: encrypted
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="m.npz: not a readable .npz file, or a damaged one"):
        lticl.load_npz(path)
