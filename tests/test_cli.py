"""The `clipasso` command in-process, with a stand-in for the sketcher: arguments, outputs checked before
any work, the wire it speaks, Ctrl-C and stdin commands, messages. Seconds, no models (except `models`)."""

import argparse
import io
import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipasso_engine import cli, models, runs, sketcher, wire
from clipasso_engine.config import make_config
from clipasso_engine.errors import Cancelled, EngineError


class FakeSketch:
    def __init__(self, strokes, name, finished_early=False):
        self.points = np.full((strokes, 4, 2), 10.0)
        self.canvas_size, self.image_size, self.canvas_to_image = 224, (40, 30), (1.0, 0, 0, 1.0, 0, 0)
        self.stroke_width, self.seed, self.loss, self.importance = 3.0, 0, 0.5, [1.0] * strokes
        self.iterations, self.finished_early, self.name = (3 if finished_early else 10), finished_early, name
        self.timings, self.device = {"total": 1.0}, "cpu"
        self.reseeded, self.short_strokes, self.frame_strokes, self.kept = 0, 0, 0, []

    def save(self, path, space="canvas"):
        Path(path).write_text(f"<svg {space}/>")


class FakeEngine:
    """prepare / sketch_many as the contract says; records what the CLI asked for."""

    def __init__(self, monkeypatch, during=None):
        self.calls, self.during = [], during
        monkeypatch.setattr(sketcher, "prepare", self.prepare, raising=False)
        monkeypatch.setattr(sketcher, "sketch_many", self.sketch_many, raising=False)

    def prepare(self, config, on_progress=None, loaded_models=None, **_):
        self.calls.append("prepare")
        on_progress(wire.event(wire.STATUS, phase="models", message="Loading the models."))
        return argparse.Namespace(device="cpu", backend="torch", models={}, config=config)

    def sketch_many(self, images, config, levels=None, *, runtime=None, names=None, crops=None, on_progress=None,
                    should_stop=None, should_finish=None, loaded_models=None, start_strokes=None, keep_start=False):
        self.calls.append(("sketch_many", list(images), list(levels), list(names or []), list(crops or [])))
        for it in range(1, 11):
            on_progress(wire.event(wire.PROGRESS, iteration=it, total=10, loss=1.0, best_loss=0.9, elapsed=it,
                                   eta=10 - it, per_iteration=1.0))
            if self.during:
                self.during(it)
            if should_stop():
                raise Cancelled()
            if should_finish():
                return [[FakeSketch(n, "x", True) for n in levels] for _ in images]
        return [[FakeSketch(n, "x") for n in levels] for _ in images]


@pytest.fixture
def photos(tmp_path):
    paths = []
    for name in ("a/cat.png", "b/cat.png", "dog.jpg"):
        path = tmp_path / name
        path.parent.mkdir(exist_ok=True)
        Image.new("RGB", (40, 30), (200, 10, 10)).save(path)
        paths.append(path)
    return paths


@pytest.fixture(autouse=True)
def restore_signals():
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGINT, handlers[0])
    signal.signal(signal.SIGTERM, handlers[1])
    models.interrupt_pending.clear()


def run_jsonl(argv, capsys):
    code = cli.main([*map(str, argv), "--progress", "jsonl"])
    out = capsys.readouterr()
    return code, [json.loads(line) for line in out.out.splitlines()], out.err


# --- arguments and help -----------------------------------------------------------------------------

def _subparser(name):
    parser = cli.build_parser()
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[name]


@pytest.mark.parametrize("command", ["sketch", "download-models", "models", "batch"])
def test_help_shows_every_default(command):
    sub = _subparser(command)
    formatter = sub.formatter_class(prog="clipasso")
    for action in sub._actions:
        if action.option_strings and action.dest != "help" and not action.required:
            assert "default" in formatter._get_help_string(action), action.option_strings


def test_default_preset_is_fast_and_models_takes_a_models_dir():
    args = cli.build_parser().parse_args(["sketch", "x.png"])
    assert args.preset == runs.DEFAULT_PRESET == "fast"
    assert cli.build_parser().parse_args(["models", "--models-dir", "/m"]).models_dir == "/m"


def test_strokes_and_crops_parse():
    args = cli.build_parser().parse_args(["sketch", "a.png", "b.png", "--strokes", "8,16,8", "--crop", "-",
                                          "--crop", "1,2,30,40"])
    assert args.strokes == [8, 16] and args.crop == [None, (1.0, 2.0, 30.0, 40.0)]
    for bad in (["--strokes", "-1"], ["--strokes", "a"], ["--crop", "1,2,3"]):
        with pytest.raises(SystemExit):
            cli.build_parser().parse_args(["sketch", "a.png", *bad])


def test_time_estimates_match_the_measured_table():
    """README benchmarks, this 2-core CPU (bench_iteration.py): fast 0.50 s/it; a pool of 32 views, 1 seed x 4
    views 0.82 s/it, 3 seeds 2.35 s/it; fresh views (paper) 1 seed 1.11 s/it."""
    def per_it(preset="fast", **knobs):
        return runs.estimated_seconds(make_config(preset, num_iterations=1, **knobs))
    assert per_it(num_augs=2) == pytest.approx(0.50, rel=0.05)   # the table's "fast preset (2 augs, pool)" row
    assert per_it(num_augs=4) == pytest.approx(0.82, rel=0.05)
    assert per_it(num_augs=4, num_seeds=3) == pytest.approx(2.35, rel=0.06)
    assert per_it("paper", num_seeds=1) == pytest.approx(1.11, rel=0.05)
    fast = make_config("fast")
    assert f"about {runs.duration_text(runs.estimated_seconds(fast))}" in runs.plan_message(fast, 1, "cpu")
    assert "about 1.5 h" in runs.plan_message(make_config("paper"), 1, "cpu")


# --- one run, several jobs ---------------------------------------------------------------------------

def test_several_images_and_levels_make_one_call_and_one_result_per_job(photos, tmp_path, capsys, monkeypatch):
    engine = FakeEngine(monkeypatch)
    out = tmp_path / "out"
    code, events, err = run_jsonl(["sketch", *photos, "--strokes", "4,8", "-o", out, "--name", "Kitty",
                                   "--crop", "1,1,20,20", "--crop", "-"], capsys)
    assert code == 0, err
    assert engine.calls[0] == "prepare" and len(engine.calls) == 2
    _, images, levels, names, _ = engine.calls[1]
    assert levels == [4, 8] and names == ["Kitty", None, None]
    # the images come read (before the models load), each with its name and its crop's map
    assert [i.name for i in images] == ["Kitty", "cat.png", "dog.jpg"] and all(i.image_size == (40, 30) for i in images)
    assert images[0].canvas_to_image[4:] == (1.0, 1.0) and images[1].canvas_to_image[4:] == (0.0, -5.0)
    kinds = [e["event"] for e in events]
    # the images are read first, then the plan with its expected time, then the models load
    assert [e.get("phase") for e in events[:2]] == ["image", "plan"] and "Reading 3 images" in events[0]["message"]
    assert "fast preset" in events[1]["message"] and "expected time" in events[1]["message"]
    start = events[kinds.index(wire.START)]
    assert [(j["job"], j["image"], j["strokes"]) for j in start["jobs"]] == [(k, k // 2, 4 * (1 + k % 2)) for k in range(6)]
    assert start["jobs"][0]["name"] == "Kitty" and start["jobs"][2]["name"] == "cat.png"
    results = [e for e in events if e["event"] == wire.RESULT]
    assert [r["job"] for r in results] == list(range(6))
    assert [Path(r["svg"]).name for r in results] == ["cat-4.svg", "cat-8.svg", "cat_2-4.svg", "cat_2-8.svg",
                                                      "dog-4.svg", "dog-8.svg"]
    assert all(Path(r["svg"]).is_file() for r in results)
    assert len(results[1]["points"]) == 8 and "strokes" in results[1] and results[1]["strokes"] == 8
    assert events[-1] == {"event": wire.DONE, "results": 6, "finished_early": False}


def test_finish_command_on_stdin_keeps_the_best_so_far(photos, tmp_path, capsys, monkeypatch):
    read_end, write_end = os.pipe()
    monkeypatch.setattr("sys.stdin", os.fdopen(read_end, "r"))
    os.write(write_end, (wire.command(wire.FINISH)).encode())
    engine = FakeEngine(monkeypatch, during=lambda it: time.sleep(0.05))
    code, events, err = run_jsonl(["sketch", photos[0], "-o", tmp_path / "c.svg"], capsys)
    os.close(write_end)
    assert code == 0, err
    result = next(e for e in events if e["event"] == wire.RESULT)
    assert result["finished_early"] and result["iteration"] < 10 and events[-1]["finished_early"]


def test_stdin_commands_cancel_and_eof(monkeypatch):
    read_end, write_end = os.pipe()
    monkeypatch.setattr("sys.stdin", os.fdopen(read_end, "r"))
    watch = runs.CancelWatch(runs.Reporter("jsonl", out=io.StringIO()), commands=True)
    os.write(write_end, b"not json\n" + wire.command(wire.FINISH).encode())
    time.sleep(0.3)
    assert watch.finish_requested.is_set() and not watch.cancelled.is_set()
    os.close(write_end)   # the caller went away
    time.sleep(0.3)
    assert watch.cancelled.is_set()
    watch.close()


# --- Ctrl-C -----------------------------------------------------------------------------------------

def test_ctrl_c_keeps_then_cancels_during_optimisation_and_cancels_while_loading():
    err = io.StringIO()
    watch = runs.CancelWatch(runs.Reporter("bar", err=err), commands=False)
    os.kill(os.getpid(), signal.SIGINT)      # while loading: no KeyboardInterrupt, a cancel
    time.sleep(0.1)
    assert watch.cancelled.is_set() and models.interrupt_pending.is_set()
    watch.close()
    models.interrupt_pending.clear()

    watch = runs.CancelWatch(runs.Reporter("bar", err=err), commands=False)
    watch.optimising.set()
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.1)
    assert watch.finish_requested.is_set() and not watch.cancelled.is_set()
    assert runs.FINISH_EARLY_MESSAGE in err.getvalue()
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.1)
    assert watch.cancelled.is_set()
    watch.close()


def test_ctrl_c_while_models_load_is_cancelled_never_a_broken_file(photos, tmp_path, capsys, monkeypatch):
    """Issue 10 item 1: a reader interrupted mid-file failed with a ValueError, reported as weights_invalid."""
    garbage = tmp_path / "ViT-B-32.safetensors"
    garbage.write_bytes(b"\0" * 64)

    def prepare(config, on_progress=None, loaded_models=None, **_):
        os.kill(os.getpid(), signal.SIGINT)   # Ctrl-C lands while a weights file is being read...
        time.sleep(0.1)
        models.load_state_dict_file(garbage)  # ...and the reader fails because of it
    monkeypatch.setattr(sketcher, "prepare", prepare, raising=False)
    code, events, err = run_jsonl(["sketch", photos[0], "-o", tmp_path / "c.svg"], capsys)
    assert code == 130 and events[-1]["code"] == "cancelled" and "Delete" not in events[-1]["message"]


# --- outputs are checked before any work ---------------------------------------------------------------

@pytest.mark.parametrize("case", ["existing_folder", "proc", "parent_is_a_file", "missing_folder", "read_only"])
def test_unwritable_output_is_refused_before_optimising(case, photos, tmp_path, capsys, monkeypatch):
    engine = FakeEngine(monkeypatch)
    (tmp_path / "afile").write_text("x")
    locked = tmp_path / "locked"
    locked.mkdir()
    output, words = {"existing_folder": (tmp_path, "existing folder"),
                     "proc": ("/proc/x.svg", "does not accept new files"),
                     "parent_is_a_file": (tmp_path / "afile" / "x.svg", "is a file, not a folder"),
                     "missing_folder": (tmp_path / "nope" / "x.svg", "does not exist"),
                     "read_only": (locked / "x.svg", "does not accept new files")}[case]
    if case == "read_only":
        if os.geteuid() == 0:
            pytest.skip("root writes into read-only folders")
        locked.chmod(0o500)
    try:
        code, events, err = run_jsonl(["sketch", photos[0], "-o", output], capsys)
    finally:
        locked.chmod(0o700)
    assert code == 1 and events[-1]["code"] == "bad_argument" and words in events[-1]["message"], events
    assert engine.calls == []                     # nothing loaded, nothing optimised
    assert not list(tmp_path.rglob(".clipasso-probe-*"))


def test_several_jobs_with_a_file_as_output_is_refused(photos, tmp_path, capsys, monkeypatch):
    FakeEngine(monkeypatch)
    (tmp_path / "one.svg").write_text("x")
    code, events, _ = run_jsonl(["sketch", photos[0], "--strokes", "4,8", "-o", tmp_path / "one.svg"], capsys)
    assert code == 1 and events[-1]["code"] == "bad_argument" and "names a folder" in events[-1]["message"]


def test_more_names_than_images_is_a_bad_argument(photos, tmp_path, capsys, monkeypatch):
    FakeEngine(monkeypatch)
    code, events, _ = run_jsonl(["sketch", photos[0], "--name", "a", "--name", "b", "-o", tmp_path / "c.svg"], capsys)
    assert code == 1 and events[-1]["code"] == "bad_argument"


# --- messages ----------------------------------------------------------------------------------------

def test_progress_bar_labels_its_numbers_and_has_no_absurd_rate():
    err = io.StringIO()
    report = runs.Reporter("bar", err=err)
    for it in (1, 2):
        report(wire.event(wire.PROGRESS, iteration=it, total=100, loss=0.9, best_loss=0.8, elapsed=1.3 * it,
                          eta=1.3 * (100 - it), per_iteration=1.3))
    report.close()
    text = err.getvalue()
    assert "train loss 0.9000" in text and "best clean-view loss 0.8000" in text and "1.30 s/it" in text
    assert "it/s" not in text


@pytest.mark.parametrize("mode,debug", [("bar", False), ("bar", True), ("jsonl", False)])
def test_unexpected_error_says_where_the_details_are(mode, debug, photos, tmp_path, capsys, monkeypatch):
    def prepare(*args, **kwargs):
        raise RuntimeError("boom")
    monkeypatch.setattr(sketcher, "prepare", prepare, raising=False)
    code = cli.main(["sketch", str(photos[0]), "-o", str(tmp_path / "c.svg"), "--progress", mode]
                    + (["--debug"] if debug else []))
    out = capsys.readouterr()
    text = out.out + out.err
    assert code == 1 and "boom" in text and "the log holds" not in text
    assert ("--debug" in text) if (mode, debug) == ("bar", False) else ("Traceback" in out.err)


def test_models_command_reads_the_models_dir(models_dir, capsys):
    assert cli.main(["models", "--models-dir", str(models_dir)]) == 0
    assert str(models_dir) in capsys.readouterr().out


@pytest.mark.skipif(not hasattr(sketcher, "prepare"), reason="sketcher.prepare has not landed")
def test_explicit_missing_device_is_device_unavailable(photos, tmp_path, capsys, models_dir):
    import torch
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    code, events, _ = run_jsonl(["sketch", photos[0], "-o", tmp_path / "c.svg", "--device", "cuda",
                                 "--models-dir", models_dir, "--iterations", 1], capsys)
    assert code == 1 and events[-1]["code"] == "device_unavailable"
