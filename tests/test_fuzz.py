"""Fuzzing: random damage to model files and random CLI arguments never give a
traceback, a hang or a silent wrong answer; each is read, or refused with one line."""

import io
import shutil
from functools import lru_cache

import jax
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_files import T, cli

import lticl

@lru_cache(maxsize=1)
def good_model_bytes() -> bytes:
    """A good model file's bytes, as `save_npz` writes them."""
    buf = io.BytesIO()
    P, Q = (np.asarray(a) for a in lticl.full_matrices(lticl.init_params(jax.random.key(0), "diag", 2, 3, scale=0.1)))
    np.savez(buf, P=P, Q=Q, variant=np.asarray("diag"))
    return buf.getvalue()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_damaged_model_file_is_read_whole_or_refused_by_name(tmp_path, data):
    """Any bytes flipped, cut or appended: load_npz gives the model the file held, or a
    ValueError that names the file."""
    raw = bytearray(good_model_bytes())
    kind = data.draw(st.sampled_from(["flip", "cut", "append"]))
    if kind == "flip":
        for i in data.draw(st.lists(st.integers(0, len(raw) - 1), min_size=1, max_size=4)):
            raw[i] ^= data.draw(st.integers(1, 255))
    elif kind == "cut":
        raw = raw[: data.draw(st.integers(0, len(raw) - 1))]
    else:
        raw += data.draw(st.binary(min_size=1, max_size=64))
    path = tmp_path / "m.npz"
    path.write_bytes(bytes(raw))
    try:
        params = lticl.load_npz(path)
    except ValueError as e:
        assert str(path) in str(e)
    else:
        assert params.variant == "diag" and params.layers == 2 and params.d == 3


_junk = st.one_of(st.sampled_from(["nan", "inf", "-inf", "-1e30", "x", "", "1.5", "0x10"]), st.text(max_size=12))
_small = st.integers(-3, 3)
# Values that are either invalid or small: a valid one must train in seconds, so
# sizes and counts never get large valid values (steps, batch, n, sequences).
_values = {
    **dict.fromkeys(["--layers", "--heads", "--d"], st.one_of(_small, st.integers(65, 10**9), _junk)),
    **dict.fromkeys(["--steps", "--batch", "--seeds", "--sequences"], st.one_of(_small, _junk)),
    "--n": st.one_of(_small, st.integers(10**5, 10**9), _junk),  # large n is refused before any work
    "--lr": st.one_of(_junk, st.floats(allow_nan=True, allow_infinity=True).map(repr)),
    **dict.fromkeys(["--noise", "--variant", "--init", "--objective", "--budget"],
                    st.one_of(_junk, st.sampled_from(["fixed:1e30", "uniform:-1", "categorical:", "gd++", "random"]))),
}


@pytest.mark.slow
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_bad_train_argument_is_one_line_or_a_run(capsys, tmp_path, data):
    option = data.draw(st.sampled_from(sorted(_values)))
    value = data.draw(_values[option])
    args = list(T)
    if option in args:
        args[args.index(option) + 1] = str(value)
    else:
        args += [option, str(value)]
    out = tmp_path / "fuzz"
    if out.exists():
        shutil.rmtree(out)
    code, _, err = cli(capsys, *args, "--out", out)
    assert "Traceback" not in err
    assert code in (0, 2), (code, err)
    if code == 2:
        assert len([line for line in err.splitlines() if line.strip()]) == 1, err
