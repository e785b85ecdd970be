"""End to end: a real photograph, generated weights, the CLI's JSON lines and the Python API."""

import json
import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from clipasso_engine import make_config, sketch, wire
from clipasso_engine.svg import SVG_NS

pytestmark = pytest.mark.slow
ITERATIONS = 30


def _engine(args, models_dir, env=None, **kw):
    env = dict(os.environ, HF_HUB_OFFLINE="1", CLIPASSO_MODELS_DIR=str(models_dir), **(env or {}))
    return subprocess.Popen([sys.executable, "-m", "clipasso_engine", *map(str, args)], env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _finish(proc, timeout=600):
    """Read stdout to the end while keeping stdin open (closing it means 'cancel' to the engine)."""
    stdout = proc.stdout.read()
    proc.wait(timeout=timeout)
    stderr = proc.stderr.read()
    proc.stdin.close()
    return stdout, stderr


def _events(text):
    return [json.loads(line) for line in text.splitlines()]   # every line must be one JSON object


@pytest.fixture(scope="module")
def api_result(chelsea_png, models_dir):
    config = make_config("fast", num_strokes=16, num_iterations=ITERATIONS, num_seeds=1, models_dir=str(models_dir),
                         threads=2)
    events = []
    return sketch(chelsea_png, config, on_progress=events.append), events


def test_api_loss_decreases_and_result_is_complete(api_result):
    result, events = api_result
    assert result.points.shape == (16, 4, 2) and np.isfinite(result.points).all()
    evals = [losses[0] for _, losses in result.eval_history]
    assert [it for it, _ in result.eval_history] == list(range(0, ITERATIONS + 1, 10))
    assert evals[-1] < evals[0]                          # the clean-view loss goes down
    assert result.loss == min(evals) < evals[0]          # and the best iterate is the one kept
    assert len(result.loss_history) == ITERATIONS and np.isfinite(result.loss_history).all()
    assert result.image_size == (451, 300)
    assert result.importance == sorted(result.importance, reverse=True)
    progress = [e for e in events if e["event"] == "progress"]
    assert [e["iteration"] for e in progress] == list(range(1, ITERATIONS + 1))
    assert progress[-1]["eta"] == 0
    # the strokes mapped into the photo land on the photo: they start inside it and Adam (lr 1 canvas px) moves a
    # point about 1 px a step at most, so after ITERATIONS steps each lies within that reach of the photo
    starts = result.image_points()[:, 0]
    reach = ITERATIONS * result.canvas_to_image[0]              # canvas px -> image px
    assert (starts >= -reach).all() and (starts <= np.array([451, 300]) + reach).all(), starts
    assert (np.median(starts, axis=0) > 0).all() and (np.median(starts, axis=0) < [451, 300]).all()


def test_cli_jsonl_result_svg_and_determinism(api_result, chelsea_png, models_dir, tmp_path):
    out = tmp_path / "chelsea.svg"
    proc = _engine(["sketch", chelsea_png, "-o", out, "--preset", "fast", "--strokes", 16, "--iterations",
                    ITERATIONS, "--seeds", 1, "--threads", 2, "--progress", "jsonl"], models_dir)
    stdout, stderr = _finish(proc)
    assert proc.returncode == 0, stderr
    events = _events(stdout)
    kinds = [e["event"] for e in events]
    start = events[kinds.index(wire.START)]
    assert [(j["job"], j["strokes"]) for j in start["jobs"]] == [(0, 16)]
    assert kinds[-2:] == [wire.RESULT, wire.DONE] and kinds.count(wire.RESULT) == 1
    assert set(kinds) <= set(wire.EVENTS) - {wire.ERROR}
    result = events[-2]
    assert result["svg"] == str(out) and result["image_size"] == [451, 300] and result["stroke_width"] == 3.0
    assert result["iteration"] == ITERATIONS and not result["finished_early"]
    # same seed, same device -> the same drawing, in another process
    api, _ = api_result
    np.testing.assert_allclose(np.array(result["points"]), api.points, atol=1e-3)
    root = ET.parse(out).getroot()
    paths = list(root.iter(f"{{{SVG_NS}}}path"))
    assert root.get("width") == "224" and len(paths) == 16
    assert all(p.get("d").startswith("M ") and " C " in p.get("d") and p.get("stroke-width") == "3.0" for p in paths)
    assert "Traceback" not in stderr


def _wait_for(proc, kind, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if json.loads(line)["event"] == kind:
            return True
    return False


def test_cli_finish_command_returns_the_best_so_far(chelsea_png, models_dir, tmp_path):
    out = tmp_path / "early.svg"
    proc = _engine(["sketch", chelsea_png, "-o", out, "--iterations", 2000, "--seeds", 1, "--strokes", 4,
                    "--threads", 2, "--progress", "jsonl"], models_dir)
    try:
        assert _wait_for(proc, "progress")
        proc.stdin.write(wire.command(wire.FINISH))
        proc.stdin.flush()
        stdout, stderr = _finish(proc, 120)
        assert proc.returncode == 0, stderr
        events = _events(stdout)
        result = next(e for e in events if e["event"] == wire.RESULT)
        assert result["finished_early"] and 0 < result["iteration"] < 2000 and len(result["points"]) == 4
        assert events[-1]["event"] == wire.DONE and events[-1]["finished_early"] and out.is_file()
    finally:
        proc.kill()


def _read_stderr_until(proc, words, timeout=300):
    seen, deadline = b"", time.time() + timeout
    while time.time() < deadline and words.encode() not in seen:
        chunk = os.read(proc.stderr.fileno(), 4096)
        if not chunk:
            break
        seen += chunk
    return seen.decode(errors="replace")


@pytest.mark.parametrize("presses", [1, 2])
def test_ctrl_c_once_keeps_twice_cancels(presses, chelsea_png, models_dir, tmp_path):
    out = tmp_path / "ctrl-c.svg"
    proc = _engine(["sketch", chelsea_png, "-o", out, "--iterations", 2000, "--seeds", 1, "--strokes", 4,
                    "--threads", 2, "--progress", "bar"], models_dir)
    try:
        assert "train loss" in _read_stderr_until(proc, "train loss")   # the optimisation runs
        proc.send_signal(signal.SIGINT)
        if presses == 2:
            time.sleep(0.2)   # two separate presses, before the next iteration ends
            proc.send_signal(signal.SIGINT)
        assert "Finishing early" in _read_stderr_until(proc, "Finishing early", 30)
        proc.wait(timeout=60)
        if presses == 1:
            assert proc.returncode == 0 and out.is_file()
        else:
            assert proc.returncode == 130 and not out.exists()
    finally:
        proc.kill()
        proc.stdin.close()


def test_cli_several_images_and_levels_in_one_run(chelsea_png, models_dir, tmp_path):
    other = tmp_path / "cat.png"
    other.write_bytes(open(chelsea_png, "rb").read())
    folder = tmp_path / "out"
    proc = _engine(["sketch", chelsea_png, other, "--strokes", "2,4", "-o", folder, "--iterations", 3, "--seeds", 1,
                    "--threads", 2, "--name", "Chelsea", "--crop", "0,0,300,300", "--progress", "jsonl"], models_dir)
    stdout, stderr = _finish(proc)
    assert proc.returncode == 0, stderr
    events = _events(stdout)
    results = [e for e in events if e["event"] == wire.RESULT]
    assert [(r["job"], r["image"], r["strokes"], len(r["points"])) for r in results] == [
        (0, 0, 2, 2), (1, 0, 4, 4), (2, 1, 2, 2), (3, 1, 4, 4)]
    assert results[0]["name"] == "Chelsea" and results[2]["name"] == "cat.png"
    assert all(r["image_size"] == [451, 300] for r in results)   # the crop keeps the whole image's frame
    assert all(Path(r["svg"]).parent == folder and Path(r["svg"]).is_file() for r in results)
    assert events[-1] == {"event": wire.DONE, "results": 4, "finished_early": False}


@pytest.mark.parametrize("how", ["close_stdin", "sigterm"])
def test_cli_stops_promptly_when_cancelled(how, chelsea_png, models_dir, tmp_path):
    proc = _engine(["sketch", chelsea_png, "-o", tmp_path / "x.svg", "--preset", "fast", "--iterations", 5000,
                    "--seeds", 1, "--strokes", 4, "--threads", 2, "--progress", "jsonl"], models_dir)
    try:
        assert _wait_for(proc, "progress")
        started = time.time()
        if how == "close_stdin":
            proc.stdin.close()
        else:
            proc.send_signal(signal.SIGTERM)
        rest = proc.stdout.read()
        proc.wait(timeout=30)
        assert time.time() - started < 15
        assert proc.returncode == 130
        assert _events(rest)[-1]["code"] == "cancelled"
        assert not (tmp_path / "x.svg").exists()
    finally:
        proc.kill()


def test_cli_bad_image_is_an_error_event(tmp_path, models_dir):
    bad = tmp_path / "holiday.jpg"
    bad.write_bytes(b"this is not a jpeg")
    proc = _engine(["sketch", bad, "-o", tmp_path / "x.svg", "--progress", "jsonl"], models_dir)
    stdout, stderr = _finish(proc, 120)
    assert proc.returncode == 1
    error = _events(stdout)[-1]
    assert error["event"] == "error" and error["code"] == "bad_image" and "holiday.jpg" in error["message"]
    assert "Traceback" not in stderr


def test_cli_missing_weights_fails_at_once(tmp_path, chelsea_png):
    empty = tmp_path / "no-models"
    empty.mkdir()
    caches = {"HF_HOME": str(tmp_path / "hf"), "CLIPASSO_CACHE": str(tmp_path / "cache"),
              "XDG_CACHE_HOME": str(tmp_path / "xdg")}   # never the real caches
    started = time.time()
    proc = _engine(["sketch", chelsea_png, "-o", tmp_path / "x.svg", "--progress", "jsonl"], empty, env=caches)
    stdout, stderr = _finish(proc, 120)
    assert time.time() - started < 60
    error = _events(stdout)[-1]
    assert proc.returncode == 1 and error["code"] == "weights_missing", stderr
    assert "download-models" in error["message"]
