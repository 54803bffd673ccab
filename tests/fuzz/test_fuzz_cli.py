"""Property-based fuzzing of the command line: whatever the files and arguments, ``reidkern
<command>`` either succeeds (exit 0) or prints exactly one ``reidkern <command>: ...`` line on
stderr and exits with 2 -- never a traceback -- and a failed command leaves no file behind."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from reidkern.cli import main

pytestmark = pytest.mark.filterwarnings("ignore")

DTYPES = ["float32", "float64", "float16", "int64", "uint8", "bool", "complex64", "str", "object"]


def _array(draw, shape, dtype):
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 16)))
    if dtype == "str":
        return np.full(shape, "x")
    if dtype == "object":
        return np.empty(shape, dtype=object)
    a = rng.integers(-2, 3, size=shape) if draw(st.booleans()) else rng.standard_normal(shape)
    if draw(st.integers(0, 5)) == 0 and a.size:
        a = a.astype(np.float64)
        a.flat[0] = draw(st.sampled_from([np.nan, np.inf, 1e300]))
    return a.astype(dtype)


@st.composite
def npz_file(draw, path):
    """An npz that is sometimes right and often hostile: wrong dtypes, shapes, missing keys, a
    single array, a text file, truncated bytes, a directory."""
    kind = draw(st.sampled_from(["npz"] * 6 + ["npy", "text", "truncated", "dir", "missing"]))
    n, d = draw(st.integers(0, 6)), draw(st.integers(0, 3))
    arrays = {"feats": _array(draw, (n, d) if draw(st.integers(0, 4)) else (n,),
                              draw(st.sampled_from(DTYPES[:2] * 4 + DTYPES))),
              "pids": _array(draw, (n if draw(st.integers(0, 4)) else n + 1,),
                             draw(st.sampled_from(["int64"] * 5 + DTYPES))),
              "camids": _array(draw, (n,), draw(st.sampled_from(["int64"] * 5 + DTYPES)))}
    for key in list(arrays):
        if draw(st.integers(0, 9)) == 0:
            del arrays[key]
    if kind == "dir":
        path.mkdir()
    elif kind == "npy":
        np.save(open(path, "wb"), np.zeros(3))
    elif kind == "text":
        path.write_text("feats,pids\n1,2\n")
    elif kind in ("npz", "truncated"):
        np.savez(open(path, "wb"), **{k: v for k, v in arrays.items() if v.dtype != object},
                 **({"extra": np.zeros(1)} if not arrays else {}))
        if kind == "truncated":
            path.write_bytes(path.read_bytes()[: draw(st.integers(0, 200))])
    return str(path)


def _check(capsys, argv, rc):
    out, err = capsys.readouterr()
    assert rc in (0, 2), (rc, err)
    assert "Traceback" not in err and "Traceback" not in out
    if rc == 2:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"reidkern {argv[0]}: "), err


@given(data=st.data())
def test_eval_never_tracebacks(data, tmp_path_factory, capsys):
    draw = data.draw
    tmp = tmp_path_factory.mktemp("cli")
    q = draw(npz_file(tmp / "q.npz"))
    g = draw(npz_file(tmp / "g.npz"))
    argv = ["eval", "--query", q, "--gallery", g]
    argv += draw(st.sampled_from([[], ["--metric", "cosine"], ["--max-rank", "0"], ["--max-rank", "x"],
                                  ["--backend", "cuda"], ["--backend", "reference"], ["--trapezoid"],
                                  ["--skip-missing"]]))
    if draw(st.booleans()):
        argv += ["--rerank", "--k1", str(draw(st.integers(-1, 4))), "--k2", str(draw(st.integers(0, 3))),
                 "--lambda-value", draw(st.sampled_from(["0.3", "1.5", "nan", "x"]))]
    _check(capsys, argv, main(argv))


@given(data=st.data())
def test_commands_never_traceback(data, tmp_path_factory, capsys):
    draw = data.draw
    tmp = tmp_path_factory.mktemp("cmd")
    bogus = str(tmp / "missing")
    before = set(tmp.iterdir())
    argv = draw(st.sampled_from([
        ["train", "baseline", "--dataset", "market1501", "--data", bogus, "--out", str(tmp / "o")],
        ["train", "no-such-model", "--dataset", "market1501", "--data", bogus],
        ["train", "baseline", "--dataset", "no-such-set", "--data", bogus, "--steps", "0"],
        ["test", "baseline", "--dataset", "market1501", "--data", bogus, "--checkpoint", bogus],
        ["extract", "baseline", "--dataset", "market1501", "--data", bogus, "--out", str(tmp / "o")],
        ["show-ranks", "--query", bogus, "--gallery", bogus, "--out", str(tmp / "o.png")],
        ["export", "baseline", "--checkpoint", bogus, "--out", str(tmp / "o.onnx")],
        ["eval", "--dataset", "market1501", "--data", bogus],
        ["eval"], ["no-such-command"], ["eval", "--query"], ["info", "--bogus"],
    ]))
    rc = main(argv)
    out, err = capsys.readouterr()
    assert rc == 2 and "Traceback" not in err, (rc, err)
    lines = err.strip().splitlines()
    prefix = "reidkern: " if argv[0] == "no-such-command" else f"reidkern {argv[0]}: "
    assert len(lines) == 1 and lines[0].startswith(prefix), err
    assert set(tmp.iterdir()) == before  # a failed command writes nothing
