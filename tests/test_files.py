"""What lticl promises about your files: never overwritten, never mixed up, never
reused unless they prove themselves, every bad file a one-line error naming it.

One test per defect found by trying lticl as a clumsy or hostile user would, and a
corpus of broken model files and run directories made here. The CLI runs in this
process (`cli`), so that each case costs no interpreter start."""

import hashlib
import io
import json
import os
import shutil
import sys
import zipfile

import jax
import numpy as np
import pytest

import lticl
from lticl import cli as lticl_cli
from lticl.rundir import CHECKPOINT, CONFIG, MANIFEST, METRICS, MODEL, SEEDS

T = ["train", "--variant", "diag", "--layers", "2", "--budget", "smoke", "--steps", "5", "--batch", "16", "--seeds",
     "1", "--d", "3", "--n", "8", "--sequences", "200"]


def cli(capsys, *args):
    """`lticl ARGS` in this process: (exit code, stdout, stderr)."""
    capsys.readouterr()
    old = sys.argv
    sys.argv = ["lticl", *map(str, args)]
    try:
        lticl_cli.main()
        code = 0
    except SystemExit as e:
        code = e.code
    finally:
        sys.argv = old
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(result, *names):
    code, _, err = result
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, (code, err)
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert "Traceback" not in err
    for name in names:
        assert str(name) in lines[0], (name, lines[0])
    return lines[0]


def contents(directory):
    """Each file's bytes digest: what a refused command must leave as it was."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished run of T."""
    out = tmp_path_factory.mktemp("run") / "D"
    old = sys.argv
    sys.argv = ["lticl", *T, "--out", str(out)]
    try:
        with pytest.raises(SystemExit) as e:
            lticl_cli.main()
    finally:
        sys.argv = old
    assert e.value.code == 0
    return out


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """A good model file, as `lticl train` writes them."""
    params = lticl.init_params(jax.random.key(0), "diag", 2, 3, scale=0.1)
    return lticl.save_npz(params, tmp_path_factory.mktemp("model") / MODEL)


@pytest.fixture
def run_dir(finished, tmp_path):
    shutil.copytree(finished, tmp_path / "D")
    return tmp_path / "D"


@pytest.mark.slow
def test_defect1_a_good_model_is_never_replaced(capsys, run_dir):
    for keep in ([MODEL], [MODEL, CONFIG]):
        for name in set(os.listdir(run_dir)) - set(keep):
            (run_dir / name).unlink()
        before = contents(run_dir)
        one_line_error(cli(capsys, *T, "--out", run_dir), run_dir / MODEL, "--force")
        assert contents(run_dir) == before
    code, _, _ = cli(capsys, *T, "--out", run_dir, "--force")  # the fix the message names
    assert code == 0 and (run_dir / MANIFEST).exists()


@pytest.mark.slow
def test_defect2_a_run_of_another_configuration_is_never_reused(capsys, run_dir):
    (run_dir / CONFIG).unlink()
    before = contents(run_dir)
    other = [*T[:4], "3", *T[5:]]  # --layers 3
    line = one_line_error(cli(capsys, *other, "--out", run_dir, "--resume"), run_dir, "another configuration")
    assert "wrote" not in line and contents(run_dir) == before


@pytest.mark.slow
def test_defect3_reuse_checks_the_model_file(capsys, run_dir):
    (run_dir / MODEL).unlink()
    one_line_error(cli(capsys, *T, "--out", run_dir, "--resume"), run_dir / MODEL, "missing")
    assert not (run_dir / MODEL).exists()


@pytest.mark.slow
def test_defect4_an_empty_checkpoint_is_an_error_not_an_interrupt(capsys, run_dir):
    for name in (MANIFEST, METRICS, MODEL, SEEDS):
        (run_dir / name).unlink()
    (run_dir / CHECKPOINT).write_bytes(b"")
    one_line_error(cli(capsys, *T, "--out", run_dir, "--resume"), run_dir / CHECKPOINT)


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncated checkpoint", "config list", "empty metrics", "flipped model byte"])
def test_defect5_damaged_run_files_give_one_line_errors(capsys, run_dir, damage):
    if damage == "truncated checkpoint":
        for name in (MANIFEST, METRICS, MODEL, SEEDS):
            (run_dir / name).unlink()
        data = (run_dir / CHECKPOINT).read_bytes()
        (run_dir / CHECKPOINT).write_bytes(data[: len(data) // 2])
        name = CHECKPOINT
    elif damage == "config list":
        (run_dir / CONFIG).write_text("[1, 2]")
        name = CONFIG
    elif damage == "empty metrics":
        (run_dir / MANIFEST).unlink()  # an unsealed run: its metrics are read to seal it
        (run_dir / METRICS).write_text("{}")
        name = METRICS
    else:
        data = bytearray((run_dir / MODEL).read_bytes())
        data[len(data) // 2] ^= 0xFF
        (run_dir / MODEL).write_bytes(bytes(data))
        name = MODEL
    before = contents(run_dir)
    one_line_error(cli(capsys, *T, "--out", run_dir, "--resume"), run_dir / name)
    assert contents(run_dir) == before


def _npz_with_header(path, shape):
    """An .npz whose P and Q headers declare `shape` over a few bytes of data."""
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.zeros((1, 1, 2, 2), np.float32))
    raw = buf.getvalue().replace(b"(1, 1, 2, 2)", str(shape).encode())
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("P.npy", raw)
        z.writestr("Q.npy", raw)
        z.writestr("variant.npy", _npy(np.asarray("full")))
    return path


def _npy(a):
    buf = io.BytesIO()
    np.lib.format.write_array(buf, a)
    return buf.getvalue()


def broken_models(tmp_path, good):
    """(path, what) for a corpus of broken model files, made from a good one."""
    data = good.read_bytes()
    cases = {
        "truncated": data[: len(data) // 2],
        "flipped byte": data[:120] + bytes([data[120] ^ 0xFF]) + data[121:],
        "empty": b"",
        "text": b"P,Q\n1,2\n",
    }
    out = []
    for what, content in cases.items():
        (tmp_path / f"{what}.npz").write_bytes(content)
        out.append((tmp_path / f"{what}.npz", what))
    out.append((_npz_with_header(tmp_path / "lying.npz", (200_000, 1000, 11, 11)), "lying header"))
    for what, arrays in {"object array": dict(P=np.array([{"a": 1}], dtype=object)),
                         "missing Q": dict(P=np.zeros((1, 1, 3, 3), np.float32), variant=np.asarray("full")),
                         "integer dtype": dict(P=np.zeros((1, 1, 3, 3), np.int64), Q=np.zeros((1, 1, 3, 3), np.int64),
                                               variant=np.asarray("full")),
                         "too deep": dict(P=np.zeros((65, 1, 3, 3), np.float32), Q=np.zeros((65, 1, 3, 3), np.float32),
                                          variant=np.asarray("full"))}.items():
        np.savez(tmp_path / f"{what}.npz", **arrays)
        out.append((tmp_path / f"{what}.npz", what))
    return out


def test_defect5_and_9_broken_model_files_give_one_line_errors_naming_them(capsys, model_file, tmp_path):
    for path, what in broken_models(tmp_path, model_file):
        for command in (["inspect", path, "--sequences", "50"], ["compare", path, "--problems", "20"],
                        ["theory", "thm42", "--model", path]):
            line = one_line_error(cli(capsys, *command), path)
            assert "pickled" not in line, (what, line)


def test_defect5_out_that_cannot_be_written_fails_before_any_work(capsys, model_file, tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    for out in (a_file, a_file / "under"):
        one_line_error(cli(capsys, *T, "--out", out), out)
        for command in (["inspect", model_file], ["compare", model_file], ["baselines", "--noise", "uniform:1"]):
            one_line_error(cli(capsys, *command, "--out", out), out)
        one_line_error(cli(capsys, "reproduce", "table1", "--budget", "smoke", "--out", out), out)


def test_defect6_a_missing_extra_is_said_before_any_work_and_brackets_survive(capsys, monkeypatch, tmp_path):
    import importlib

    paper_sized = lticl.save_npz(lticl.init_params(jax.random.key(0), "diag", 2, 10), tmp_path / "d10.npz")

    real = importlib.import_module
    monkeypatch.setattr(importlib, "import_module",
                        lambda name, *a: (_ for _ in ()).throw(ImportError(name)) if name.startswith("sklearn") else real(name, *a))
    line = one_line_error(cli(capsys, "compare", paper_sized))
    assert "pip install 'lticl[data]'" in line
    odd = tmp_path / "[red]" / "model.npz"
    line = one_line_error(cli(capsys, "inspect", odd))
    assert "[red]" in line


@pytest.mark.slow
@pytest.mark.parametrize("args", [["--lr", "inf"], ["--noise", "fixed:1e30"]])
def test_defect7_a_run_none_of_whose_steps_trained_is_not_usable(capsys, tmp_path, args):
    code, out, err = cli(capsys, *T, *args, "--out", tmp_path / "D")
    if code == 2:  # refused up front
        assert "finite" in err
        return
    assert code == 0 and "no seed trained to a usable model" in err
    assert json.loads((tmp_path / "D" / METRICS).read_text())["usable"] is False
    json.loads((tmp_path / "D" / CONFIG).read_text(), parse_constant=lambda c: pytest.fail(f"not JSON: {c}"))


def test_defect8_model_size_is_bounded(capsys, tmp_path):
    one_line_error(cli(capsys, *[*T[:4], "10000", *T[5:]], "--out", tmp_path / "D"), "layers", "limit")
    one_line_error(cli(capsys, *T, "--n", "100000", "--out", tmp_path / "D"), "n × (d + 1)", "limit")
    path = _npz_with_header(tmp_path / "deep.npz", (200_000, 1, 11, 11))
    one_line_error(cli(capsys, "inspect", path), path)


@pytest.mark.slow
def test_defect9_messages_say_what_differs_and_what_was_done(capsys, run_dir):
    (run_dir / CONFIG).write_text("not json")
    one_line_error(cli(capsys, *T, "--out", run_dir, "--resume"), run_dir / CONFIG)
    code, out, _ = cli(capsys, *T, "--out", run_dir, "--force")
    code, out, _ = cli(capsys, *T, "--out", run_dir, "--resume")
    assert code == 0 and "reused the finished run" in out.replace("\n", " ") and "wrote" not in out
    line = one_line_error(cli(capsys, *[*T[:8], "6", *T[9:]], "--out", run_dir, "--resume"), run_dir)
    assert "steps 5 (here 6)" in line


def test_defect10_minor_ones(tmp_path):
    with pytest.raises(ValueError, match="batch must be an integer"):
        lticl.sample_tasks(jax.random.key(0), "uniform:1", True, 8, 3)
    with pytest.raises(ValueError, match="PRNG key"):
        lticl.sample_tasks(0, "uniform:1", 4, 8, 3)
    solve = lticl.algorithm(lticl.init_params(jax.random.key(0), "diag", 2, 3))
    with pytest.raises(ValueError, match="finite"):
        solve(np.full((8, 3), np.nan), np.zeros(8))
    path = lticl.save_npz(lticl.init_params(jax.random.key(0), "diag", 2, 3), tmp_path / "m.npz")
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


@pytest.mark.slow
def test_a_run_killed_before_its_seal_is_sealed_on_resume(capsys, run_dir):
    (run_dir / MANIFEST).unlink()
    code, out, _ = cli(capsys, *T, "--out", run_dir, "--resume")
    assert code == 0 and (run_dir / MANIFEST).exists()


def test_reports_and_figures_are_replaced_not_written_in_place(tmp_path):
    # A copy of an output directory made with hard links (cp -al) shares its files;
    # a report written in place would change the original's too (it did, to Table 1's).
    from lticl.plotting import pyplot, save
    from lticl.sweep import write_results
    from lticl.table1 import row, write_table1

    rows = lambda ours: [row("diag", 2, "uniform:1", ours, 0.29, worst=3.0, seeds=1, tail_worst=4.0, tail_pool=1000)]
    out, copy = tmp_path / "out", tmp_path / "copy"
    out.mkdir()
    written = write_table1(rows(0.3), out, "smoke") + write_results(rows(0.3), out, "results")
    fig = pyplot().figure()
    written += save(fig, out, "fig")
    before = {p.name: p.read_bytes() for p in written}
    copy.mkdir()
    for p in written:
        os.link(p, copy / p.name)
    write_table1(rows(0.5), copy, "smoke")
    write_results(rows(0.5), copy, "results")
    save(pyplot().figure(figsize=(3, 2)), copy, "fig")
    for p in written:
        assert p.read_bytes() == before[p.name], p.name
        assert (copy / p.name).read_bytes() != before[p.name], p.name


def test_the_progress_log_of_a_hard_linked_copy_is_its_own(tmp_path):
    from rich.console import Console

    from lticl.cli.progress import LOG, Tracker

    out, copy = tmp_path / "out", tmp_path / "copy"
    with Tracker(Console(file=io.StringIO()), out) as t:
        t.update(t.add_task("first", total=2), completed=1)
    before = (out / LOG).read_bytes()
    copy.mkdir()
    os.link(out / LOG, copy / LOG)
    with Tracker(Console(file=io.StringIO()), copy) as t:
        t.update(t.add_task("second", total=2), completed=2)
    assert (out / LOG).read_bytes() == before
    assert (copy / LOG).read_bytes().startswith(before) and b"second" in (copy / LOG).read_bytes()
