"""`clipasso batch`: names, manifest, resuming after SIGKILL, bad files, Ray parity. Stand-in weights, 2 steps."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clipasso_engine import batch
from clipasso_engine.errors import EngineError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def photos(tmp_path):
    """3 real photos (scikit-image's) + a second chelsea.png in another folder + one file that is no image."""
    from PIL import Image
    from skimage import data
    folder = tmp_path / "photos"
    (folder / "more").mkdir(parents=True)
    for name in ("astronaut", "chelsea", "coffee"):
        Image.fromarray(getattr(data, name)()).resize((96, 96)).save(folder / f"{name}.png")
    Image.fromarray(data.chelsea()).resize((80, 64)).save(folder / "more" / "chelsea.png")
    (folder / "broken.png").write_bytes(b"not an image at all")
    return folder


def _cmd(inputs, out, models_dir, *extra):
    return [sys.executable, "-m", "clipasso_engine.batch", *map(str, inputs), "-o", str(out), "--preset", "fast",
            "--iterations", "2", "--device", "cpu", "--models-dir", str(models_dir), "--threads", "1",
            "--progress", "jsonl", *extra]


def _env():
    return dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))


def _rows(out):
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines() if line.strip()]


def test_names_are_unique_and_stable(tmp_path):
    a, b = tmp_path / "a" / "cat.jpg", tmp_path / "b" / "cat.jpg"
    names = batch.unique_names([a, b, tmp_path / "dog.png"])
    assert len(set(names)) == 3 and names[2] == "dog"
    assert batch.unique_names([b, a]) == names[1::-1]  # order of inputs does not change a name


def test_inputs_from_folder_glob_and_lists(tmp_path):
    for n in ("x.png", "y.jpg", "notes.md"):
        (tmp_path / n).write_bytes(b"")
    (tmp_path / "list.txt").write_text("# a comment\nx.png\n")
    (tmp_path / "list.csv").write_text("image,label\ny.jpg,dog\n")
    assert [p.name for p in batch.collect_inputs([str(tmp_path)])] == ["x.png", "y.jpg"]
    assert [p.name for p in batch.collect_inputs([str(tmp_path / "*.jpg")])] == ["y.jpg"]
    assert [p.name for p in batch.collect_inputs([str(tmp_path / "list.txt"), str(tmp_path / "list.csv")])] \
        == ["x.png", "y.jpg"]
    with pytest.raises(EngineError) as err:
        batch.collect_inputs([str(tmp_path / "missing-*.png")])
    assert err.value.code == "bad_argument"


def test_manifest_ignores_a_line_cut_by_a_kill(tmp_path):
    (tmp_path / "manifest.jsonl").write_text('{"name": "a", "strokes": 8, "status": "ok"}\n{"name": "b", "str')
    batch.append_row(tmp_path, {"name": "c", "strokes": 8, "status": "ok"})
    assert set(batch.read_manifest(tmp_path)) == {("a", 8), ("c", 8)}


def test_batch_survives_sigkill_and_resumes_without_loss_or_duplicates(photos, models_dir, tmp_path):
    out = tmp_path / "out"
    # First run: killed (SIGKILL) as soon as the first sketch is recorded.
    proc = subprocess.Popen(_cmd([photos, photos / "more"], out, models_dir, "--batch-images", "1"), env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            if (out / "manifest.jsonl").exists() and any(r["status"] == "ok" for r in _rows(out)):
                break
            time.sleep(0.2)
        assert proc.poll() is None, "the batch finished before it could be killed: nothing tested"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    first = _rows(out)
    # Rerun to the end: it skips what is recorded and draws the rest.
    done = subprocess.run(_cmd([photos, photos / "more"], out, models_dir, "--batch-images", "2"), env=_env(),
                          capture_output=True, text=True, timeout=400)
    events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert done.returncode == 1, done.stderr  # one bad file -> exit 1, everything else done
    rows = _rows(out)
    keys = [(r["name"], r["strokes"]) for r in rows]
    assert len(keys) == len(set(keys)) == 5, keys  # 5 inputs x 1 level, each once
    assert rows[:len(first)] == first  # nothing recorded before the kill was redone
    assert [e["event"] for e in events[:2]] == ["status", "batch_start"]   # the images read, then the plan
    assert events[1]["skipped"] == len(first)
    bad = [r for r in rows if r["status"] == "error"]
    assert [(r["name"], r["error"]["code"]) for r in bad] == [("broken", "bad_image")]
    ok = [r for r in rows if r["status"] == "ok"]
    assert {r["name"] for r in ok} >= {"astronaut", "coffee"}
    assert len([r for r in ok if r["name"].startswith("chelsea")]) == 2  # two chelsea.png, two names
    for r in ok:
        assert (out / r["svg"]).read_text().lstrip().startswith("<")
        assert r["iterations"] <= 2 and r["device"] == "cpu" and r["loss"] is not None
    svgs = sorted(p.name for p in out.glob("*.svg"))
    assert svgs == sorted(r["svg"] for r in ok)  # no orphan, no temp files
    assert not list(out.glob(".*.tmp"))
    # A third run has nothing left to do.
    again = subprocess.run(_cmd([photos, photos / "more"], out, models_dir), env=_env(), capture_output=True, text=True, timeout=120)
    assert again.returncode == 1 and len(_rows(out)) == 5  # still one bad file, nothing redone


def test_sketch_batch_and_ray_give_the_same_svgs(photos, models_dir, tmp_path):
    """Issue 16 item 8: with this machine's own thread count (no --threads), `sketch`, `batch` and
    `batch --ray` give byte-identical SVGs (Ray workers run with the local run's thread count; float sums
    depend on it), and Ray's own start-up warnings are not shown."""
    pytest.importorskip("ray", reason="Ray is not installed (pip install .[ray])")
    inputs = [photos / "chelsea.png", photos / "coffee.png"]
    local, clustered, alone = tmp_path / "local", tmp_path / "ray", tmp_path / "alone"
    no_threads = [a for a in _cmd(inputs, local, models_dir) if a not in ("--threads", "1")]
    assert "--threads" not in no_threads
    # torch's default thread count, 2 (not 1: Ray gives a 1-CPU worker 1 thread, which would agree by luck)
    env = dict(_env(), OMP_NUM_THREADS="2")
    subprocess.run(no_threads, env=env, check=True, capture_output=True, timeout=300)
    alone.mkdir()
    sketch = [sys.executable, "-m", "clipasso_engine", "sketch", str(inputs[0]), "-o", str(alone / "chelsea-16.svg"),
              "--preset", "fast", "--iterations", "2", "--device", "cpu", "--models-dir", str(models_dir),
              "--progress", "none"]
    subprocess.run(sketch, env=env, check=True, capture_output=True, timeout=300)
    # 4 logical CPUs for 2-thread workers: two workers, one image each
    env = dict(env, CLIPASSO_RAY_CPUS="4", RAY_DISABLE_USAGE_STATS="1")
    ray_cmd = [a.replace(str(local), str(clustered)) for a in no_threads] + ["--ray"]
    run = subprocess.run(ray_cmd, env=env, capture_output=True, text=True, timeout=400)
    assert run.returncode == 0, run.stderr[-3000:]
    start = next(e for e in map(json.loads, run.stdout.splitlines()) if e["event"] == "batch_start")
    assert start["device"] == "Ray, 2 CPU workers"
    for name in ("chelsea-16.svg", "coffee-16.svg"):
        assert (clustered / name).read_text() == (local / name).read_text()
    assert (alone / "chelsea-16.svg").read_text() == (local / "chelsea-16.svg").read_text()
    assert {(r["name"], r["status"]) for r in _rows(clustered)} == {("chelsea", "ok"), ("coffee", "ok")}
    assert "token" not in run.stderr.lower() and "WARNING" not in run.stderr, run.stderr[-2000:]
