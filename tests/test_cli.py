"""CLI: user errors are one ``reidkern <command>: ...`` line on stderr, exit code 2, no traceback;
files are written atomically."""
import numpy as np
import pytest

from reidkern.atomic import atomic_open, atomic_path
from reidkern.cli import main


def _npz(path, **arrays):
    np.savez(path, **arrays)
    return str(path)


@pytest.fixture
def qg(tmp_path):
    rng = np.random.default_rng(0)
    q = _npz(tmp_path / "q.npz", feats=rng.standard_normal((5, 4)).astype(np.float32),
             pids=np.arange(5), camids=np.zeros(5, np.int64))
    g = _npz(tmp_path / "g.npz", feats=rng.standard_normal((8, 4)).astype(np.float32),
             pids=np.arange(8) % 5, camids=np.ones(8, np.int64))
    return q, g


def _fails_cleanly(capsys, argv, *words):
    rc = main(argv)
    out, err = capsys.readouterr()
    assert rc == 2, (rc, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"reidkern {argv[0]}: "), err
    assert "Traceback" not in err
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def test_eval_runs(capsys, qg):
    assert main(["eval", "--query", qg[0], "--gallery", qg[1]]) == 0
    out, err = capsys.readouterr()
    assert "mAP" in out and err == ""


def test_eval_bad_files_one_line(capsys, qg, tmp_path):
    q, g = qg
    (tmp_path / "trunc.npz").write_bytes(open(g, "rb").read()[:200])
    (tmp_path / "text.npz").write_text("hello\n")
    np.save(tmp_path / "one.npy", np.zeros(3))
    strings = _npz(tmp_path / "s.npz", feats=np.array([["a"]]), pids=np.arange(1), camids=np.zeros(1, int))
    objects = _npz(tmp_path / "o.npz", feats=np.array([None, 1], dtype=object), pids=np.arange(1),
                   camids=np.zeros(1, int))
    lacks = _npz(tmp_path / "l.npz", feats=np.zeros((2, 2)))
    badpids = _npz(tmp_path / "p.npz", feats=np.zeros((2, 2)), pids=np.zeros(3, int), camids=np.zeros(2, int))
    for query, words in [(str(tmp_path / "trunc.npz"), ["--query", "npz"]),
                         (str(tmp_path / "text.npz"), ["--query"]),
                         (str(tmp_path / "one.npy"), ["--query", "one array"]),
                         (str(tmp_path), ["--query", "not a file"]),
                         (str(tmp_path / "missing.npz"), ["--query", "does not exist"]),
                         (strings, ["--query", "feats"]), (objects, ["--query"]),
                         (lacks, ["--query", "pids"]), (badpids, ["--query", "pids"])]:
        _fails_cleanly(capsys, ["eval", "--query", query, "--gallery", g], *words)


def test_eval_bad_arguments_one_line(capsys, qg):
    q, g = qg
    base = ["eval", "--query", q, "--gallery", g]
    _fails_cleanly(capsys, base + ["--backend", "bogus"], "--backend")
    _fails_cleanly(capsys, base + ["--max-rank", "x"], "--max-rank")
    _fails_cleanly(capsys, base + ["--max-rank", "0"], "max_rank")
    _fails_cleanly(capsys, base + ["--rerank", "--k1", "0"], "k1")
    _fails_cleanly(capsys, base + ["--rerank", "--lambda-value", "2"], "lambda_value")


def test_eval_cuda_backend_without_cuda_names_backend(capsys, qg):
    import torch
    if torch.cuda.is_available():
        pytest.skip("CUDA present: --backend cuda is valid")
    q, g = qg
    line = _fails_cleanly(capsys, ["eval", "--query", q, "--gallery", g, "--backend", "cuda"], "backend")
    assert "overflow" not in line


def test_eval_rerank_honours_cosine_metric(capsys, qg, tmp_path):
    """--rerank --metric cosine re-ranks the unit-normalised features (it used to ignore the metric)."""
    q, g = qg
    rng = np.random.default_rng(1)
    # rescale gallery rows: cosine ranking is unchanged, Euclidean ranking changes
    data = dict(np.load(g))
    data["feats"] = data["feats"] * rng.uniform(0.1, 10, (8, 1)).astype(np.float32)
    g2 = _npz(tmp_path / "g2.npz", **data)
    args = ["--rerank", "--k1", "3", "--k2", "2", "--metric", "cosine"]
    assert main(["eval", "--query", q, "--gallery", g] + args) == 0
    a = capsys.readouterr().out
    assert main(["eval", "--query", q, "--gallery", g2] + args) == 0
    b = capsys.readouterr().out
    assert "cosine" in a
    strip = lambda s: [l for l in s.splitlines() if not l.startswith("time")]
    assert strip(a) == strip(b)


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_open(target) as f:
            f.write("partial")
            raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]
    with atomic_path(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]
