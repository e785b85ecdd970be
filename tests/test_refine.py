"""Refine in the editor (issue 14): start from given strokes, keep them, add to them; exact round trips.

The engine runs on generated (random) weights: these tests are about geometry and bookkeeping (what moves,
what is returned where), not about what is drawn."""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from clipasso_engine import make_config, sketch, sketcher, svg, svgpaths, wire
from clipasso_engine.errors import EngineError

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def config(models_dir):
    return make_config("fast", num_strokes=6, num_iterations=0, num_seeds=1, models_dir=str(models_dir), threads=2)


@pytest.fixture(scope="module")
def runtime(config):
    return sketcher.prepare(config)


@pytest.fixture(scope="module")
def first(chelsea_png, config, runtime):
    """A 6-stroke sketch to start from (no step taken: the saliency's start strokes)."""
    return sketch(chelsea_png, config, runtime=runtime)


def _same_strokes(a, b, tolerance):
    """Every stroke of a has one in b within tolerance (order-free), and as many."""
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    gaps = np.abs(a[:, None] - b[None]).max(axis=(2, 3))
    assert gaps.min(axis=1).max() <= tolerance, gaps.min(axis=1)


def test_kept_strokes_never_move_while_the_added_ones_do(chelsea_png, config, runtime, first):
    given = first.points
    kept = sketch(chelsea_png, config, runtime=runtime, start_strokes=given, keep_start=True, num_strokes=4,
                  num_iterations=20)
    assert kept.points.shape == (10, 4, 2) and len(kept.importance) == 10    # importance covers every stroke
    assert sorted(kept.kept) == sorted(set(kept.kept)) and len(kept.kept) == 6
    assert np.array_equal(np.sort(kept.points[kept.kept], axis=0), np.sort(given, axis=0))  # byte-identical
    unmoved = sketch(chelsea_png, config, runtime=runtime, start_strokes=given, keep_start=True, num_strokes=4)
    added_now = np.delete(kept.points, kept.kept, axis=0)
    added_start = np.delete(unmoved.points, unmoved.kept, axis=0)
    gaps = np.abs(added_now[:, None] - added_start[None]).max(axis=(2, 3)).min(axis=1)
    assert (gaps > 0.5).all(), gaps                                           # every added stroke moved


def test_refined_strokes_move_and_nothing_is_reported_kept(chelsea_png, config, runtime, first):
    refined = sketch(chelsea_png, config, runtime=runtime, start_strokes=first.points, num_strokes=0,
                     num_iterations=20)
    assert refined.points.shape == first.points.shape and refined.kept == []
    assert np.abs(np.sort(refined.points, axis=0) - np.sort(first.points, axis=0)).max() > 0.5


def test_added_strokes_start_away_from_the_given_ones(chelsea_png, config, runtime, first):
    from clipasso_engine import strokes
    added = sketch(chelsea_png, config, runtime=runtime, start_strokes=first.points, keep_start=True,
                   num_strokes=6)
    new = np.delete(added.points, added.kept, axis=0)[:, 0]                  # the added strokes' first points
    along_given = strokes.curve_points(first.points).reshape(-1, 2)
    nearest = np.linalg.norm(new[:, None] - along_given[None], axis=-1).min(axis=1)
    assert (nearest > 4).all(), nearest


def test_several_images_with_different_start_counts_batch_in_one_run(chelsea_png, config, runtime, first):
    results = sketcher.sketch_many([chelsea_png, chelsea_png, chelsea_png], config, [2, 3], runtime=runtime,
                                   start_strokes=[first.points, None, first.points[:2]], keep_start=True)
    counts = [[r.points.shape[0] for r in row] for row in results]
    assert counts == [[8, 9], [2, 3], [4, 5]]
    for row, given in zip(results, [first.points, None, first.points[:2]]):
        for result in row:
            if given is not None:
                _same_strokes(result.points[result.kept], given, 0.0)
            else:
                assert result.kept == []


@pytest.mark.parametrize("kwargs, words", [
    (dict(start_strokes=None, num_strokes=0), "Nothing to draw"),
    (dict(start_strokes="first", keep_start=True, num_strokes=0), "to add to the kept ones"),
    (dict(start_strokes=np.zeros((2, 3, 2))), "(K, 4, 2)"),
    (dict(start_strokes=np.full((1, 4, 2), np.nan)), "finite"),
])
def test_bad_start_strokes_are_bad_argument(kwargs, words, chelsea_png, config, runtime, first):
    if isinstance(kwargs.get("start_strokes"), str):
        kwargs = dict(kwargs, start_strokes=first.points)
    with pytest.raises(EngineError) as error:
        sketch(chelsea_png, config, runtime=runtime, **kwargs)
    assert error.value.code == "bad_argument" and words in error.value.message


# --- the CLI: --start-from, --keep-start -------------------------------------------------------------------

def _engine(args, models_dir, env=None, timeout=600):
    env = dict(os.environ, HF_HUB_OFFLINE="1", CLIPASSO_MODELS_DIR=str(models_dir), **(env or {}))
    proc = subprocess.run([sys.executable, "-m", "clipasso_engine", "sketch", *map(str, args), "--progress", "jsonl",
                           "--threads", "2"], env=env, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)
    return proc, [json.loads(line) for line in proc.stdout.splitlines()]


def _points(path):
    return svg.svg_to_strokes(path.read_text())[0]


def test_round_trip_through_the_canvas_and_the_image_file_is_exact(chelsea_png, models_dir, tmp_path):
    proc, events = _engine([chelsea_png, "-o", tmp_path / "a.svg", "--image-svg", tmp_path / "a_image.svg",
                            "--strokes", 8, "--iterations", 0, "--seeds", 1], models_dir)
    assert proc.returncode == 0, proc.stderr
    # the same photo twice: once from the canvas file, once from the photo-space file, in one run
    proc, events = _engine([chelsea_png, chelsea_png, "--start-from", tmp_path / "a.svg",
                            "--start-from", tmp_path / "a_image.svg", "--strokes", 0, "--iterations", 0,
                            "--seeds", 1, "-o", tmp_path / "b", "--image-svg", tmp_path / "b_image"], models_dir)
    assert proc.returncode == 0, proc.stderr
    results = [e for e in events if e["event"] == wire.RESULT]
    assert [r["kept"] for r in results] == [[], []] and [r["strokes"] for r in results] == [0, 0]
    _same_strokes(_points(tmp_path / "b" / "chelsea-0.svg"), _points(tmp_path / "a.svg"), 1e-4)
    _same_strokes(_points(tmp_path / "b_image" / "chelsea_2-0.svg"), _points(tmp_path / "a_image.svg"), 1e-4)


def test_keep_start_on_the_cli_reports_the_kept_strokes(chelsea_png, models_dir, tmp_path):
    start = tmp_path / "mine.svg"
    start.write_text('<svg xmlns="http://www.w3.org/2000/svg" width="224" height="224" viewBox="0 0 224 224">'
                     '<g transform="translate(10 0)"><path id="hand" d="M 40 60 L 100 60 Q 130 60 130 90"/></g>'
                     '</svg>')
    proc, events = _engine([chelsea_png, "--start-from", start, "--keep-start", "--strokes", 3, "--iterations", 10,
                            "--seeds", 1, "-o", tmp_path / "out.svg"], models_dir)
    assert proc.returncode == 0, proc.stderr
    result = [e for e in events if e["event"] == wire.RESULT][0]
    points = np.array(result["points"])
    assert len(points) == 5 and len(result["kept"]) == 2
    expected = svgpaths.read_start_strokes(start.read_text(), 224, (451, 300), (1, 0, 0, 1, 0, 0))
    _same_strokes(points[result["kept"]], expected, 1e-4)   # the line and the quadratic, as given


@pytest.mark.parametrize("content, args, words", [
    ("this is no svg", [], "not an SVG file"),
    ('<svg xmlns="http://www.w3.org/2000/svg" width="224" height="224"><text>hi</text></svg>', [], "holds no path"),
    ('<svg xmlns="http://www.w3.org/2000/svg" width="500" height="500"><path d="M 1 1 L 9 9"/></svg>', [],
     "neither the 224 x 224 canvas"),
    (None, [], "MB"),
    ('<svg xmlns="http://www.w3.org/2000/svg" width="224" height="224"><path d="M 1 1 L 9 9"/></svg>',
     ["--keep-start"], "to add to the kept ones"),
])
def test_bad_start_files_are_answered_before_any_model_loads(content, args, words, chelsea_png, tmp_path):
    start = tmp_path / "start.svg"
    if content is None:
        start.write_bytes(b"<svg>" + b" " * (svgpaths.MAX_START_FILE_BYTES + 10) + b"</svg>")   # too large
    else:
        start.write_text(content)
    empty = tmp_path / "no-models"     # no weights at all: answering bad_argument proves nothing was loaded
    empty.mkdir()
    started = time.time()
    proc, events = _engine([chelsea_png, "--start-from", start, *args, "-o", tmp_path / "x.svg"], empty,
                           env={"HF_HOME": str(tmp_path / "hf"), "CLIPASSO_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 1 and time.time() - started < 60
    error = events[-1]
    assert error["event"] == wire.ERROR and error["code"] == "bad_argument", error
    assert words in error["message"], error["message"]
    assert "Traceback" not in proc.stderr


def test_keep_start_needs_start_from(chelsea_png, models_dir, tmp_path):
    proc, events = _engine([chelsea_png, "--keep-start", "-o", tmp_path / "x.svg"], models_dir)
    assert proc.returncode == 1 and events[-1]["code"] == "bad_argument" and "--start-from" in events[-1]["message"]
