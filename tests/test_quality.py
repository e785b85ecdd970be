"""What the engine draws, on a real trained network (ImageNet EfficientNet-Lite0 standing in for CLIP).

Random weights say nothing about drawing quality; these tests run the unmodified loop on a network that
has learnt to see (tests/standin_net.py), through the engine's perceptual-network seam. They check what a
designer would: the loss falls, strokes move onto the photo's edges, the importance order is real, no
stroke starts on (or is drawn along) the frame between a photo and its padding, no stroke ends as a dot.
Skipped, with the reason, only where the stand-in's wheels are not installed.
"""

import numpy as np
import pytest
import torch

from clipasso_engine import imageio, raster, saliency, sketcher, strokes
from clipasso_engine.config import make_config
from clipasso_engine.losses import CLIPLoss

from standin_net import EfficientNetStandIn, unavailable_reason

pytestmark = pytest.mark.skipif(unavailable_reason() is not None, reason=str(unavailable_reason()))


@pytest.fixture(scope="module")
def standin():
    return EfficientNetStandIn("efficientnet-lite0")


@pytest.fixture(scope="module")
def runtime(standin):
    return sketcher.prepare(make_config("fast"), loaded_models={"RN101": standin, "ViT-B-32": standin})


@pytest.fixture(scope="module")
def horse():
    from skimage import data
    return np.where(data.horse()[..., None], 255, 0).repeat(3, axis=2).astype(np.uint8)   # black on white, padded


@pytest.fixture(scope="module")
def coffee():
    from skimage import data
    return data.coffee()                                                                  # 600 x 400, padded


def _config(**knobs):
    return make_config("fast", **{"num_iterations": 60, "num_strokes": 12, **knobs})


@pytest.mark.parametrize("photo, margin", [("horse", 0.15), ("coffee", 0.04)])
def test_a_short_run_lowers_the_loss_and_draws_on_the_edges(photo, margin, request, runtime):
    image = request.getfixturevalue(photo)
    config = _config()
    loaded = imageio.load_image(image, config, name=photo)
    result = sketcher.sketch(loaded, config, runtime=runtime)
    chosen = config.seeds.index(result.seed)
    start_loss = result.eval_history[0][1][chosen]
    assert result.loss <= (1 - margin) * start_loss, (result.loss, start_loss)
    edges = strokes.edge_map(loaded.target, loaded.photo_box)
    start = sketcher.init_points(runtime.models["ViT-B-32"], [loaded], sketcher.Layout(1, (12,), 1), config,
                                 runtime.device, sketcher.Control(), sketcher.StartStrokes.none(1),
                                 "torch").points[0][0].numpy()
    assert strokes.edge_alignment(result.points, edges) > strokes.edge_alignment(start, edges) + 0.05


def test_importance_order_is_real(horse, runtime, standin):
    config = _config()
    result = sketcher.sketch(horse, config, runtime=runtime)
    loaded = imageio.load_image(horse, config)
    loss = CLIPLoss(standin, loaded.target, config)
    points = torch.tensor(result.points, dtype=torch.float32)

    def without(k):
        keep = [j for j in range(len(points)) if j != k]
        return float(loss.clean(raster.render_strokes(points[keep][None], 1.5, 224)))
    assert without(0) > without(len(points) - 1)


def test_a_batched_level_equals_the_same_level_alone(coffee, runtime):
    config = _config(num_iterations=3, num_seeds=2)
    batched = sketcher.sketch_many([coffee], config, [6, 12], runtime=runtime)[0][1]
    alone = sketcher.sketch_many([coffee], config, [12], runtime=runtime)[0][0]
    key = lambda p: p[np.lexsort(p.reshape(len(p), -1).T[::-1])]   # noqa: E731  importance order may tie
    assert np.abs(key(batched.points) - key(alone.points)).max() < 0.01


def test_no_start_stroke_on_the_frame_of_a_padded_photo(coffee, runtime):
    config = make_config("fast", num_strokes=32, soft_padding=0.0)     # hard white padding: the frame is an edge
    loaded = imageio.load_image(coffee, config)
    distribution = saliency.saliency_map(runtime.models["ViT-B-32"], loaded.target, config)[0]
    left, top, right, bottom = loaded.photo_box
    rows = np.arange(224) + 0.5
    near_frame = (np.abs(rows - top) < 4) | (np.abs(rows - bottom) < 4)
    assert distribution[near_frame].sum() > 0.01            # unrestricted, the frame does attract strokes
    restricted = saliency.inside_photo(distribution, loaded.photo_box, config.frame_margin)
    assert restricted[near_frame].sum() == 0 and restricted.sum() == pytest.approx(1.0)
    points = sketcher.init_points(runtime.models["ViT-B-32"], [loaded], sketcher.Layout(1, (32,), 3), config,
                                  runtime.device, sketcher.Control(), sketcher.StartStrokes.none(1), "torch").points
    assert not strokes.on_frame(points[0].reshape(-1, 4, 2).numpy(), loaded.photo_box, 224).any()


def test_soft_padding_has_no_edge_and_keeps_the_photo_and_the_map(coffee):
    hard = imageio.load_image(coffee, make_config("fast", soft_padding=0.0))
    soft = imageio.load_image(coffee, make_config("fast"))
    assert soft.canvas_to_image == hard.canvas_to_image and soft.photo_box == hard.photo_box
    top, bottom = int(np.ceil(hard.photo_box[1])), int(np.floor(hard.photo_box[3]))
    assert torch.equal(soft.target[..., top:bottom, :], hard.target[..., top:bottom, :])
    step = lambda t: (t[0, :, top, :] - t[0, :, top - 1, :]).abs().mean()   # noqa: E731  across the frame
    assert step(hard.target) > 0.2 and step(soft.target) < step(hard.target) / 3
    assert float(soft.target[0, :, 0, :].mean()) > 0.9      # far from the photo the padding is (nearly) white


def test_collapsed_strokes_are_reseeded_deterministically(horse, runtime):
    # a long threshold makes re-seeding certain in a short run
    config = _config(num_iterations=40, min_stroke_length=12.0, reseed_until=0.9)
    first = sketcher.sketch(horse, config, runtime=runtime)
    again = sketcher.sketch(horse, config, runtime=runtime)
    assert first.reseeded > 0
    assert np.array_equal(first.points, again.points) and first.reseeded == again.reseeded


def test_after_a_run_no_stroke_is_a_dot(coffee, horse, runtime):
    for image in (coffee, horse):
        result = sketcher.sketch(image, make_config("fast", num_strokes=16), runtime=runtime)
        assert result.short_strokes <= 1 and result.frame_strokes == 0
        assert (strokes.stroke_lengths(result.points) >= 5.0).sum() >= 15
