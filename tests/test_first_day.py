"""Issue 16, the engine's half: a new user's first commands. Bad input is answered before torch and the
models load, `batch` does what `sketch` does by default and says what it will do and how long it takes
before it starts, and every message names a command or a path that works as written. Seconds, no models."""

import argparse
import io
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from PIL import Image

from clipasso_engine import batch, cli, models, runs, sketcher, wire
from clipasso_engine.config import make_config
from clipasso_engine.errors import EngineError

ROOT = Path(__file__).resolve().parents[1]


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bad_images(folder: Path) -> dict:
    """15 ways a file given as an image is not one -> the words its message must hold."""
    folder.mkdir(parents=True, exist_ok=True)
    good = io.BytesIO()
    Image.new("RGB", (300, 200), (200, 30, 30)).save(good, "PNG")
    jpeg, webp, tiff, gif = io.BytesIO(), io.BytesIO(), io.BytesIO(), io.BytesIO()
    noise = Image.effect_noise((300, 200), 40).convert("RGB")
    noise.save(jpeg, "JPEG")
    noise.save(webp, "WEBP")
    noise.save(tiff, "TIFF")
    noise.convert("P").save(gif, "GIF")
    ihdr = _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0))
    files = {
        "empty.png": (b"", "empty"),
        "text.png": (b"hello, this is text\n", "not an image"),
        "truncated.png": (good.getvalue()[:len(good.getvalue()) // 2], "damaged"),
        "truncated.jpg": (jpeg.getvalue()[:len(jpeg.getvalue()) // 3], "damaged"),
        "truncated.webp": (webp.getvalue()[:60], "damaged"),
        "truncated.tif": (tiff.getvalue()[:400], "damaged"),
        "truncated.gif": (gif.getvalue()[:20], "damaged"),
        "bomb.png": (b"\x89PNG\r\n\x1a\n" + ihdr + _png_chunk(b"IDAT", zlib.compress(b"\0" * 100)), "too large"),
        "drawing.png": (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"/>', "SVG"),
        "document.jpg": (b"%PDF-1.4\n%...", "PDF"),
        "page.png": (b"<!DOCTYPE html><html><body>404 Not Found</body></html>", "not an image"),
    }
    for name, (data, _) in files.items():
        (folder / name).write_bytes(data)
    with open(folder / "zeros.png", "wb") as f:   # 1 GiB of zeros, sparse: refused without reading it
        f.truncate(1 << 30)
    with open(folder / "huge.png", "wb") as f:    # larger than any picture we accept: refused by its size
        f.truncate(2 << 30)
    (folder / "folder.png").mkdir(exist_ok=True)
    words = {name: w for name, (_, w) in files.items()}
    words.update({"zeros.png": "not an image", "huge.png": "too large", "folder.png": "folder",
                  "missing.png": "not found"})
    return words


CHECK_ALL = r"""
import json, re, sys, time
from clipasso_engine import cli
out = {}
for path in sys.argv[2:]:
    t = time.perf_counter()
    code = cli.main(["sketch", path, "-o", sys.argv[1], "--models-dir", sys.argv[1] + ".models",
                     "--progress", "none"])
    out[path] = {"code": code, "seconds": time.perf_counter() - t}
out["torch imported"] = "torch" in sys.modules
# VmHWM, not ru_maxrss: that one keeps the forking parent's peak across exec
out["peak MB"] = int(re.search(r"VmHWM:\s*(\d+)", open("/proc/self/status").read()).group(1)) / 1024
print(json.dumps(out))
"""


def test_fifteen_bad_images_are_answered_with_their_own_code_before_torch_or_a_model_loads(tmp_path):
    """Issue 16 item 1: with no weights installed, 10 of these were answered weights_missing after ~9 s."""
    words = bad_images(tmp_path / "bad")
    paths = [str(tmp_path / "bad" / name) for name in words]
    assert len(paths) == 15
    run = subprocess.run([sys.executable, "-c", CHECK_ALL, str(tmp_path / "out.svg"), *paths], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT)))
    result = json.loads(run.stdout.splitlines()[-1])
    messages = [line for line in run.stderr.splitlines() if line.startswith("clipasso: error:")]
    assert len(messages) == 15, run.stderr
    for path, message in zip(paths, messages):
        name = Path(path).name
        assert result[path]["code"] == 1
        assert message.startswith(f"clipasso: error: {name}: ") and words[name] in message, message
        assert "weights" not in message
        assert result[path]["seconds"] < 1.0, (name, result[path])   # well under a second each
    assert not result["torch imported"]          # answered before torch, so before any model
    assert result["peak MB"] < 300                # the 1 GiB files were never read whole
    assert not (tmp_path / "out.svg").exists()


def test_the_api_reads_its_images_before_it_loads_a_model(tmp_path, monkeypatch):
    def prepare(*args, **kwargs):
        raise AssertionError("models loaded before the image was read")
    monkeypatch.setattr(sketcher, "prepare", prepare)
    (tmp_path / "text.png").write_text("not a picture")
    for call in (lambda: sketcher.sketch(str(tmp_path / "text.png"), make_config("fast")),
                 lambda: sketcher.sketch_many([b"\x89PNG\r\n\x1a\n broken"], make_config("fast"), [4, 8])):
        with pytest.raises(EngineError) as caught:
            call()
        assert caught.value.code == "bad_image"
    with pytest.raises(EngineError) as caught:      # options are checked before the images too
        sketcher.sketch_many([str(tmp_path / "text.png")], make_config("fast"), [0])
    assert caught.value.code == "bad_argument"


def test_a_missing_gpu_is_answered_before_any_time_estimate(tmp_path, capsys):
    import torch
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    photo = tmp_path / "cat.png"
    Image.new("RGB", (40, 30)).save(photo)
    code = cli.main(["sketch", str(photo), "-o", str(tmp_path / "c.svg"), "--device", "cuda", "--progress", "jsonl"])
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 1 and events[-1]["code"] == "device_unavailable"
    assert [e.get("phase") for e in events] == ["image", None]   # read, then refused: no estimate


# --- batch: the same default as sketch, the plan and its time before anything loads --------------------

class FakeEngine:
    """sketcher.prepare / sketch_many as the contract says, recording the order things happen in."""

    def __init__(self, monkeypatch, log):
        self.log = log
        monkeypatch.setattr(sketcher, "prepare", self.prepare)
        monkeypatch.setattr(sketcher, "sketch_many", self.sketch_many)

    def prepare(self, config, on_progress=None, **_):
        self.log.append(("prepare", config.preset))
        return argparse.Namespace(device=argparse.Namespace(type="cpu"), backend="torch", models={}, config=config)

    def sketch_many(self, images, config, levels=None, *, on_progress=None, **_):
        self.log.append(("sketch_many", len(images), list(levels)))
        for it in (1, 2):
            on_progress(wire.event(wire.PROGRESS, iteration=it, total=2, loss=1.0, best_loss=0.9, elapsed=it,
                                   eta=2.0 - it, per_iteration=1.0))
        return [[self._sketch(n) for n in levels] for _ in images]

    @staticmethod
    def _sketch(strokes):
        from clipasso_engine.sketcher import Sketch
        import numpy as np
        return Sketch(points=np.full((strokes, 4, 2), 10.0), stroke_width=3.0, canvas_size=224, image_size=(40, 30),
                      canvas_to_image=(1.0, 0, 0, 1.0, 0, 0), loss=0.5, seed=0)


def _batch(argv, capsys, log=None):
    code = cli.main(["batch", *map(str, argv), "--progress", "jsonl"])
    out = capsys.readouterr()
    events = [json.loads(line) for line in out.out.splitlines()]
    if log is not None:
        log.extend(("event", e["event"]) for e in events)
    return code, events, out.err


def test_batch_defaults_to_what_sketch_does_and_shows_every_default():
    args = cli.build_parser().parse_args(["batch", "photos/", "-o", "out/"])
    sketch = cli.build_parser().parse_args(["sketch", "x.png"])
    assert args.preset == sketch.preset == "fast"
    assert batch.build_config(args).num_iterations == make_config("fast").num_iterations
    help_text = subprocess.run([sys.executable, "-m", "clipasso_engine", "batch", "--help"], capture_output=True,
                               text=True, env=dict(os.environ, PYTHONPATH=str(ROOT), COLUMNS="200")).stdout
    assert "(default: fast)" in help_text and "(default: auto)" in help_text


def test_batch_says_what_it_will_do_and_how_long_before_the_models_load(tmp_path, capsys, monkeypatch):
    log = []
    engine = FakeEngine(monkeypatch, log)
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("cat", "dog"):
        Image.new("RGB", (40, 30), (200, 10, 10)).save(photos / f"{name}.png")
    (photos / "notes.png").write_text("not a picture")
    real_prepare = engine.prepare

    def prepare(config, on_progress=None, **kw):
        assert (tmp_path / "out" / "manifest.jsonl").exists()   # the bad file's row is written already
        return real_prepare(config, on_progress, **kw)
    monkeypatch.setattr(sketcher, "prepare", prepare)
    code, events, _ = _batch([photos, "-o", tmp_path / "out", "--strokes", "4,8", "--device", "cpu"], capsys)
    assert code == 1   # one bad file
    assert events[0]["message"] == "Reading 3 images before loading the models"
    start = events[1]
    assert start["event"] == batch.BATCH_START and start["device"] == "cpu" and start["pending"] == 4
    assert "2 images x 2 levels (4,8) = 4 sketches, fast preset" in start["message"]
    assert "1 unreadable file recorded as error" in start["message"] and "expected time" in start["message"]
    config = make_config("fast")
    expected = runs.estimated_seconds(config, 2, 1) * 2   # the extension's and sketch's estimate, per image
    assert start["estimated_seconds"] == pytest.approx(expected, abs=0.1)
    assert runs.duration_text(expected) in start["message"]
    assert log[0] == ("prepare", "fast") and [e for e in log if e[0] == "sketch_many"] == [("sketch_many", 1, [4, 8])] * 2
    items = [e for e in events if e["event"] == batch.BATCH_ITEM]
    assert [(i["name"], i["status"]) for i in items[:2]] == [("notes", "error")] * 2
    assert items[-1]["eta"] == 0 and all(i["eta"] is not None for i in items)


def test_batch_bar_shows_the_time_left_from_the_first_moment():
    err = io.StringIO()
    progress = batch.Progress(runs.Reporter("bar", err=err), total=4, skipped=0, outdir=Path("/out"), jobs=4,
                              seconds_per_job=30.0)
    assert "2 min left" in err.getvalue()             # 4 x 30 s, before anything ran
    progress.chunk_started(2)
    progress.engine_event(wire.event(wire.PROGRESS, iteration=5, total=10, loss=1, best_loss=1, elapsed=5, eta=20.0,
                                     per_iteration=1.0), ["a"])
    assert "step 5/10, 80 s left" in err.getvalue()  # this chunk's 20 s + 2 more sketches at 30 s
    progress.close()


def test_batch_refusals_create_nothing_and_name_a_command_that_runs(tmp_path, capsys, monkeypatch):
    photo = tmp_path / "cat.png"
    Image.new("RGB", (40, 30)).save(photo)
    monkeypatch.setitem(sys.modules, "ray", None)        # Ray not installed: `import ray` fails
    code, events, _ = _batch([photo, "-o", tmp_path / "out", "--ray"], capsys)
    message = events[-1]["message"]
    assert code == 1 and events[-1]["code"] == "bad_argument"
    assert f"{sys.executable} -m pip install 'ray>=2.9'" in message and "clipasso-sketch" not in message
    assert not (tmp_path / "out").exists()
    for argv, code_name, words in (
            (["-o", "/proc/clipasso-out"], "bad_argument", "Cannot create the output folder /proc/clipasso-out"),
            (["-o", tmp_path / "out", "--strokes", "0"], "bad_argument", "strokes"),
            (["-o", tmp_path / "out", "--batch-images", "many"], "bad_argument", "--batch-images"),
            (["-o", tmp_path / "out", "--threads", "-2"], "bad_argument", "Threads")):
        code, events, _ = _batch([photo, *argv], capsys)
        assert code == 1 and events[-1]["code"] == code_name and words in events[-1]["message"], events
        assert "Errno" not in events[-1]["message"]
        assert not (tmp_path / "out").exists()
    import torch
    if not torch.cuda.is_available():
        code, events, _ = _batch([photo, "-o", tmp_path / "out", "--device", "cuda"], capsys)
        assert [e["event"] for e in events] == ["status", "error"] and events[-1]["code"] == "device_unavailable"
        assert not (tmp_path / "out").exists()


def test_an_unwritable_output_is_one_sentence_with_the_path(tmp_path, capsys):
    photo = tmp_path / "cat.png"
    Image.new("RGB", (40, 30)).save(photo)
    code = cli.main(["sketch", str(photo), "-o", "/proc/cat.svg"])
    err = capsys.readouterr().err
    assert code == 1 and "Cannot write /proc/cat.svg" in err and "Choose another place with -o" in err
    assert "Errno" not in err and "No such file" not in err


# --- commands that run as written ------------------------------------------------------------------------

def test_the_download_command_runs_as_written(tmp_path, monkeypatch):
    """install.py puts the engine in its own environment: its `clipasso` is not on the user's PATH."""
    venv_bin = tmp_path / "venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "python").write_text("")
    monkeypatch.setattr(sys, "executable", str(venv_bin / "python"))
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert models.engine_command("download-models") == f"{sys.executable} -m clipasso_engine download-models"
    script = venv_bin / "clipasso"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    assert models.engine_command("download-models") == f"{script} download-models"
    config = make_config("fast", models_dir=str(tmp_path / "my models"))
    assert models.download_command(config) == f"{script} download-models --models-dir '{tmp_path / 'my models'}'"
    monkeypatch.setenv("PATH", f"{venv_bin}:/usr/bin")   # activated, or linked onto PATH: the short name
    assert models.engine_command("download-models") == "clipasso download-models"


def test_a_ray_head_that_does_not_answer_is_one_sentence_at_once(tmp_path, capsys):
    pytest.importorskip("ray", reason="Ray is not installed")
    photo = tmp_path / "cat.png"
    Image.new("RGB", (40, 30)).save(photo)
    code, events, _ = _batch([photo, "-o", tmp_path / "out", "--ray", "127.0.0.1:1"], capsys)
    assert code == 1 and events[-1]["code"] == "bad_argument" and "127.0.0.1:1 does not answer" in events[-1]["message"]
    assert not (tmp_path / "out").exists()
