"""The optimisation loop's contract: batched == alone, previews == results, finish, freeze, errors.

Small runs (a few strokes, 1 augmented view, tens of iterations) on generated weights: what matters
here is which strokes come out, not how good they are.
"""

import numpy as np
import pytest
import torch

from clipasso_engine import clip, raster, sketcher, wire
from clipasso_engine.config import make_config
from clipasso_engine.errors import EngineError

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def config(models_dir):
    # a pool of 4 augmentations (fast preset: 32) keeps the pool's one-off target views cheap here
    return make_config("fast", num_iterations=10, num_seeds=2, num_augs=1, augment_pool=4, models_dir=str(models_dir))


@pytest.fixture(scope="module")
def runtime(config, rn101_visual, vit_visual):
    return sketcher.prepare(config, loaded_models={"RN101": rn101_visual, "ViT-B-32": vit_visual})


@pytest.fixture(scope="module")
def square_png(tmp_path_factory):
    """A second, different picture: a dark disc and a bar on white."""
    from PIL import Image, ImageDraw
    path = tmp_path_factory.mktemp("images") / "disc.png"
    image = Image.new("RGB", (160, 160), "white")
    draw = ImageDraw.Draw(image)
    draw.ellipse((30, 30, 110, 110), fill=(20, 20, 60))
    draw.rectangle((120, 20, 135, 150), fill=(90, 10, 10))
    image.save(path)
    return path


def _by_position(points):
    """Strokes in a fixed order (results are importance-ordered, previews are not)."""
    points = np.asarray(points, dtype=np.float64)
    return points[np.lexsort(points.reshape(len(points), -1).T[::-1])]


def _close(a, b, atol):
    return np.abs(_by_position(a) - _by_position(b)).max() <= atol


# --- batching ---------------------------------------------------------------------------------------

def test_levels_and_images_batched_give_what_each_gets_alone(chelsea_png, square_png, config, runtime):
    # Few steps: CLIP's float rounding differs with the batch size (~1e-7), and Adam's sign-like steps
    # (lr 1 px) amplify it about tenfold per step, so after hundreds of steps batched and alone are
    # equally good but different drawings, as runs on two GPUs are. Here it must still be rounding.
    config = config.replace(num_iterations=3, eval_every=1)
    batched = sketcher.sketch_many([chelsea_png, square_png], config, [3, 6], runtime=runtime)
    assert [[r.num_strokes for r in row] for row in batched] == [[3, 6], [3, 6]]
    for i, image in enumerate([chelsea_png, square_png]):
        for j, level in enumerate([3, 6]):
            alone = sketcher.sketch_many([image], config, [level], runtime=runtime)[0][0]
            got = batched[i][j]
            assert got.seed == alone.seed and got.image_size == alone.image_size
            # same start strokes, same augmentations, own Adam moments: the same drawing up to float rounding
            assert _close(got.points, alone.points, atol=0.01), (i, level)
            assert got.loss == pytest.approx(alone.loss, rel=1e-3)
    # and the jobs really are different drawings (not one result copied)
    assert not _close(batched[0][0].points, batched[1][0].points, atol=1.0)


# --- previews and Keep current -------------------------------------------------------------------------

def test_previews_are_well_formed_and_match_the_result_at_that_iteration(chelsea_png, config, runtime, monkeypatch):
    monkeypatch.setattr(wire, "PREVIEW_INTERVAL_S", 0.0)     # every evaluation, however fast
    events = []
    # no re-seeding (it happens in the first 70 % of a run): then the first 5 of 10 steps are a 5-step run
    config = config.replace(num_seeds=1, eval_every=5, min_stroke_length=0.0)
    final = sketcher.sketch_many([chelsea_png], config, [4, 5], runtime=runtime, on_progress=events.append)
    previews = [e for e in events if e["event"] == wire.PREVIEW]
    assert [p["iteration"] for p in previews] == [0, 5, 10]
    for p in previews:
        assert p["total"] == 10 and [s["job"] for s in p["sketches"]] == [0, 1]
        for sketch, strokes in zip(p["sketches"], [4, 5]):
            assert sketch["strokes"] == strokes and np.asarray(sketch["points"]).shape == (strokes, 4, 2)
            assert sketch["image_size"] == [451, 300] and len(sketch["canvas_to_image"]) == 6
            assert sketch["canvas"] == [224, 224] and np.isfinite(sketch["loss"])
    at_5 = sketcher.sketch_many([chelsea_png], config.replace(num_iterations=5), [4, 5], runtime=runtime)[0]
    for job in range(2):
        assert _close(previews[1]["sketches"][job]["points"], at_5[job].points, atol=2e-3)
        assert previews[1]["sketches"][job]["loss"] == pytest.approx(at_5[job].loss, rel=1e-4)
        assert _close(previews[2]["sketches"][job]["points"], final[0][job].points, atol=2e-3)


@pytest.mark.parametrize("how", ["should_finish", "callback"])
def test_finish_returns_the_best_so_far_as_a_normal_result(how, chelsea_png, config, runtime):
    progress = []

    def on_progress(event):
        if event["event"] == wire.PROGRESS:
            progress.append(event)
        if how == "callback" and len(progress) >= 5:
            return wire.FINISH
    config = config.replace(min_stroke_length=0.0)   # no re-seeding: the first 5 of 1000 steps are a 5-step run
    kept = sketcher.sketch(chelsea_png, config.replace(num_iterations=1000, num_strokes=4), runtime=runtime,
                           on_progress=on_progress,
                           should_finish=(lambda: len(progress) >= 5) if how == "should_finish" else None)
    assert kept.finished_early and kept.iterations == 5
    assert kept.points.shape == (4, 4, 2) and np.isfinite(kept.points).all()
    assert kept.importance == sorted(kept.importance, reverse=True)
    full = sketcher.sketch(chelsea_png, config.replace(num_iterations=5, num_strokes=4), runtime=runtime)
    assert not full.finished_early and full.iterations == 5
    assert _close(kept.points, full.points, atol=1e-6) and kept.loss == full.loss


def test_should_stop_cancels(chelsea_png, config, runtime):
    with pytest.raises(EngineError) as error:
        sketcher.sketch(chelsea_png, config.replace(num_iterations=1000, num_strokes=2), runtime=runtime,
                        should_stop=lambda: True)
    assert error.value.code == "cancelled"


# --- early stop ---------------------------------------------------------------------------------------

class DarkerOnTheRight:
    """A stand-in loss: strokes want to move right."""

    def value_and_grad(self, sketches, generator, target_index):
        x = sketches.detach().requires_grad_(True)
        loss = (x * torch.linspace(0, 1, 224)).mean(dim=(1, 2, 3))
        loss.sum().backward()
        return loss.detach(), x.grad


def test_a_stopped_seed_is_frozen_even_though_adam_has_momentum():
    points = [torch.tensor([[[[20.0, 20], [40, 60], [80, 40], [100, 100]]]] * 2)]   # 2 rows, 1 stroke
    points[0].requires_grad_(True)
    optimizer = torch.optim.Adam(points, lr=1.0)

    def step(held):
        sketches = sketcher.render_all(points, make_config(), "torch")
        sketcher.optimise_step(points, sketches, optimizer, DarkerOnTheRight(), None, None, [torch.tensor(held)])

    step([[False], [False]])
    before = points[0].detach().clone()
    step([[True], [False]])
    after = points[0].detach()
    assert torch.equal(after[0], before[0])              # frozen: not moved by the momentum
    assert (after[1] - before[1]).abs().max() > 0.1      # the other seed still learns


def test_a_kept_stroke_never_moves_and_builds_no_momentum():
    start = torch.tensor([[[20.0, 20], [40, 60], [80, 40], [100, 100]], [[30.0, 150], [60, 170], [90, 150], [120, 170]]])
    points = [start[None].clone().requires_grad_(True)]          # 1 sketch, 2 strokes: the first kept
    optimizer = torch.optim.Adam(points, lr=1.0)
    held = [torch.tensor([[True, False]])]

    for _ in range(20):
        sketcher.optimise_step(points, sketcher.render_all(points, make_config(), "torch"), optimizer,
                               DarkerOnTheRight(), None, None, held)
    assert torch.equal(points[0][0, 0].detach(), start[0])                     # byte-identical
    assert (points[0][0, 1].detach() - start[1]).abs().max() > 5               # the other one moved
    state = optimizer.state[points[0]]
    assert not state["exp_avg"][0, 0].any() and not state["exp_avg_sq"][0, 0].any()   # no momentum to release


def reference_loop(losses, min_delta=1e-5):
    """The original code's evaluation loop (painterly_rendering.py), transcribed: (index of the evaluation it
    breaks at or None, best loss, index of the best)."""
    best_loss, best_iter, terminate = 100.0, 0, False
    for k, loss in enumerate(losses):
        cur_delta = loss - best_loss
        if abs(cur_delta) > min_delta:
            if cur_delta < 0:
                best_loss, best_iter, terminate = loss, k, False
        if abs(cur_delta) <= min_delta:
            if terminate:
                return k, best_loss, best_iter
            terminate = True
    return None, best_loss, best_iter


def _loss_walks(rows, evals, seed):
    """Loss sequences that settle: steps of a few 1e-5 around the tolerance, some up, some exactly 1e-5."""
    g = np.random.default_rng(seed)
    steps = g.choice([-3e-5, -1.2e-5, -1e-5, -8e-6, -2e-6, 0.0, 4e-6, 1e-5, 2e-5], size=(rows, evals))
    return (1.0 + np.cumsum(steps, axis=1)).astype(np.float32)   # float32, as the evaluations are


@pytest.mark.parametrize("seed", range(5))
def test_paper_stops_and_keeps_the_best_exactly_as_the_original_code(seed):
    config = make_config("paper")
    assert config.early_stop and config.best_min_improvement == config.early_stop_tolerance == 1e-5
    walks = _loss_walks(8, 40, seed)
    tracker = sketcher.BestOfSeeds([torch.zeros(8, 1, 4, 2)], config)
    stopped_at = [None] * 8
    for k in range(walks.shape[1]):
        was_active = tracker.active.clone()
        tracker.update(k * 10, torch.from_numpy(walks[:, k]), [torch.full((8, 1, 4, 2), float(k))])
        for row in range(8):
            if was_active[row] and not tracker.active[row]:
                stopped_at[row] = k
    for row in range(8):
        stop, best, best_index = reference_loop([float(v) for v in walks[row]])
        assert stopped_at[row] == stop, (row, walks[row])
        assert float(tracker.loss[row]) == best and int(tracker.iteration[row]) == 10 * best_index
        assert float(tracker.points[0][row].max()) == best_index            # the points of that evaluation
    assert any(s is not None for s in stopped_at)                           # the rule was exercised


def test_fast_and_balanced_never_stop_and_take_any_decrease():
    for preset in ("fast", "balanced"):
        config = make_config(preset)
        tracker = sketcher.BestOfSeeds([torch.zeros(1, 1, 4, 2)], config)
        for k, loss in enumerate([1.0, 1.0, 1.0, 1.0 - 2e-6, 1.0 - 2e-6]):
            tracker.update(k * 10, torch.tensor([loss]), [torch.full((1, 1, 4, 2), float(k))])
        assert tracker.active.all() and int(tracker.iteration[0]) == 30


def test_a_converged_paper_run_stops_at_the_second_settled_evaluation(chelsea_png, models_dir):
    """lr 0: nothing moves, every evaluation equals the first, so the original code breaks at evaluation 2."""
    config = make_config("paper", num_seeds=1, num_augs=1, num_iterations=100, lr=0.0, models_dir=str(models_dir))
    result = sketcher.sketch(chelsea_png, config)
    assert result.iterations == 20 and result.best_iteration == 0
    assert [it for it, _ in result.eval_history] == [0, 10, 20]


# --- errors and knobs ---------------------------------------------------------------------------------

def test_unknown_option_and_bad_knobs_are_bad_arguments(chelsea_png):
    for call in (lambda: sketcher.sketch(chelsea_png, num_strokez=8),
                 lambda: make_config(control_points=3),
                 lambda: make_config(conv_layer_weights=(0, 1, 1, 1, 0)),
                 lambda: make_config(precision="fp8"),
                 lambda: sketcher.sketch_many([chelsea_png], make_config(), [8, 0]),
                 lambda: sketcher.sketch_many([chelsea_png, chelsea_png], make_config(), names=["one"])):
        with pytest.raises(EngineError) as error:
            call()
        assert error.value.code == "bad_argument"


def test_out_of_memory_becomes_its_error_code(chelsea_png, config, runtime, monkeypatch):
    def boom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    monkeypatch.setattr(sketcher, "optimise", boom)
    with pytest.raises(EngineError) as error:
        sketcher.sketch_many([chelsea_png], config, [4, 8], runtime=runtime)
    assert error.value.code == "out_of_memory" and "fewer seeds" in error.value.message


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_an_explicit_missing_gpu_is_device_unavailable(monkeypatch):
    for device in ("cuda", "cuda:1"):
        with pytest.raises(EngineError) as error:
            sketcher.resolve_device(device)
        assert error.value.code == "device_unavailable" and "--device auto or cpu" in error.value.message
    monkeypatch.setenv(wire.CALLER_ENV, wire.CALLER_INKSCAPE)   # under the extension: the dialog's words
    with pytest.raises(EngineError) as error:
        sketcher.resolve_device("cuda")
    assert "Run on: Auto or CPU" in error.value.message and "--device" not in error.value.message
    assert sketcher.resolve_device("auto").type in ("cpu", "mps")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_auto_without_a_gpu_says_so(config, rn101_visual, vit_visual):
    events = []
    runtime = sketcher.prepare(config.replace(device="auto"), events.append,
                               loaded_models={"RN101": rn101_visual, "ViT-B-32": vit_visual})
    assert runtime.device.type in ("cpu", "mps")
    notices = [e["message"] for e in events if e["event"] == wire.NOTICE]
    assert notices == (["No GPU found: drawing on the CPU (slower)."] if runtime.device.type == "cpu" else [])


def test_clip_precision_per_device():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert clip.autocast_dtype(cpu, "auto") is None and clip.autocast_dtype(cpu, "fp16") is None
    assert clip.autocast_dtype(cuda, "auto") == torch.float16 and clip.autocast_dtype(cuda, "fp32") is None


def test_render_all_concatenates_levels_in_layout_order():
    layout = sketcher.Layout(num_images=2, levels=(2, 5), num_seeds=3)
    assert layout.num_rows == 12 and layout.rows(1, 1) == slice(9, 12)
    assert layout.target_index("cpu").tolist() == [0, 0, 0, 1, 1, 1] * 2
    assert list(layout.jobs()) == [(0, 0, 0), (1, 0, 1), (2, 1, 0), (3, 1, 1)]
    points = [torch.rand(6, 2, 4, 2) * 224, torch.rand(6, 5, 4, 2) * 224]
    both = sketcher.render_all(points, make_config(), "torch")
    assert both.shape == (12, 3, 224, 224)
    torch.testing.assert_close(both[6:], raster.render_strokes(points[1], 1.5, 224, "torch"))
