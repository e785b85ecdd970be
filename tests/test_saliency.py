"""Saliency initialisation: every piece against a hand or independent computation of the reference."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

from clipasso_engine.config import Config
from clipasso_engine.saliency import (clip_normalize, init_strokes, otsu_threshold, saliency_map,
                                      stroke_distribution, vit_attention_map, vit_forward_with_attention,
                                      xdog_edges, xdog_ink_mask)

torch.set_num_threads(2)
skimage = pytest.importorskip("skimage")
from skimage.color import rgb2gray  # noqa: E402
from skimage.filters import threshold_otsu  # noqa: E402

CONFIG = Config()


@pytest.fixture(scope="module")
def vit():
    open_clip = pytest.importorskip("open_clip")
    torch.manual_seed(0)
    return open_clip.create_model("ViT-B-32-quickgelu", pretrained=None).visual.eval()


def square_image(size=224, box=(80, 140, 60, 120)):
    """White canvas with a black rectangle rows box[0]:box[1], columns box[2]:box[3]."""
    image = torch.ones(1, 3, size, size)
    image[..., box[0]:box[1], box[2]:box[3]] = 0.0
    return image


def chelsea_target():
    from PIL import Image
    cat = Image.fromarray(skimage.data.chelsea()).resize((224, 224), Image.BICUBIC)
    return torch.from_numpy(np.array(cat)).permute(2, 0, 1)[None].float() / 255.0


# --- XDoG / Otsu ---------------------------------------------------------------------------------

def reference_xdog(image_norm):
    """The reference's XDoG_ with skimage, written from its formula."""
    im = rgb2gray(image_norm[0].permute(1, 2, 0).numpy())
    imdiff = gaussian_filter(im, 0.8) - 0.98 * gaussian_filter(im, 0.8 * 10)
    imdiff = (imdiff < -0.1) * 1.0 + (imdiff >= -0.1) * (1.0 + np.tanh(200 * imdiff))
    imdiff -= imdiff.min()
    imdiff /= imdiff.max()
    return (imdiff >= threshold_otsu(imdiff)).astype(np.float32)


def test_xdog_matches_direct_computation_of_the_formula():
    g = torch.Generator().manual_seed(1)
    image = torch.ones(1, 3, 48, 40)
    image[..., 10:30, 8:20] = 0.1                                   # a dark block
    image[:, 0, 20:28, 25:35] = 0.2                                 # a cyan block: the grey weights matter
    image[:, 2, 35:37, :] = 0.3                                     # a thin yellow line
    image = (image + 0.05 * torch.rand(image.shape, generator=g)).clamp(0, 1)
    image_norm = clip_normalize(image)
    ours = xdog_edges(image_norm, CONFIG)
    expected = reference_xdog(image_norm)
    assert ours.shape == (48, 40) and ours.dtype == np.float32
    assert 0 < expected.mean() < 1                                   # the case is not trivial
    np.testing.assert_array_equal(ours, expected)
    np.testing.assert_array_equal(xdog_ink_mask(image_norm, CONFIG), 1 - expected)
    cat = clip_normalize(chelsea_target())                           # and a photograph
    np.testing.assert_array_equal(xdog_edges(cat, CONFIG), reference_xdog(cat))


def test_xdog_knobs_come_from_config():
    image_norm = clip_normalize(chelsea_target())
    default = xdog_ink_mask(image_norm, CONFIG)
    other = xdog_ink_mask(image_norm, CONFIG.replace(xdog_sigma=2.0, xdog_epsilon=-0.01))
    assert np.mean(default != other) > 0.01


@pytest.mark.parametrize("case", ["uniform", "bimodal", "float32", "few_values", "constant"])
def test_otsu_equals_skimage(case):
    rng = np.random.default_rng(3)
    values = {
        "uniform": rng.random((50, 60)),
        "bimodal": np.concatenate([rng.normal(0.2, 0.05, 900), rng.normal(0.7, 0.1, 300)]).reshape(30, 40),
        "float32": (rng.random((64, 64)) ** 3).astype(np.float32),
        "few_values": rng.choice([0.0, 0.5, 1.0], size=(20, 20), p=[0.6, 0.1, 0.3]),
        "constant": np.full((8, 8), 0.25),
    }[case]
    assert otsu_threshold(values) == threshold_otsu(values)


def test_ink_mask_is_the_black_square_and_never_the_white_background():
    ink = xdog_ink_mask(clip_normalize(square_image()), CONFIG)
    assert set(np.unique(ink)) == {0.0, 1.0}
    assert ink[80:140, 60:120].min() == 1.0                          # inside and on its edges
    outside = np.ones_like(ink, dtype=bool)
    outside[80:140, 60:120] = False
    assert ink[outside].max() == 0.0                                 # white paper: no ink


def test_blank_images_have_no_ink():
    for value in (0.0, 1.0):
        ink = xdog_ink_mask(clip_normalize(torch.full((1, 3, 64, 64), value)), CONFIG)
        assert ink.shape == (64, 64) and ink.max() == 0.0


# --- distribution ------------------------------------------------------------------------------

def test_softmax_over_positive_entries_by_hand():
    saliency = np.array([[0.0, 0.5, 1.0],
                         [0.2, 0.0, 0.9],
                         [1.0, 1.0, 0.3]])
    ink = np.array([[1, 1, 1],
                    [1, 1, 0],
                    [0, 1, 1]], dtype=np.float32)
    dist = stroke_distribution(saliency, ink, 0.3)
    # positive M: 0.5, 1.0, 0.2, 1.0, 0.3 at (0,1) (0,2) (1,0) (2,1) (2,2)
    e = {(0, 1): np.exp(0.5 / 0.3), (0, 2): np.exp(1 / 0.3), (1, 0): np.exp(0.2 / 0.3),
         (2, 1): np.exp(1 / 0.3), (2, 2): np.exp(0.3 / 0.3)}
    total = sum(e.values())
    expected = np.zeros((3, 3))
    for (r, c), v in e.items():
        expected[r, c] = v / total
    np.testing.assert_allclose(dist, expected, rtol=1e-12)
    assert dist[0, 0] == 0.0 and dist[1, 1] == 0.0 and dist[1, 2] == 0.0 and dist[2, 0] == 0.0
    assert dist.sum() == pytest.approx(1.0, abs=1e-12)


def test_distribution_fallbacks_when_nothing_has_ink():
    saliency = np.array([[0.0, 1.0], [0.5, 0.0]])
    no_ink = np.zeros((2, 2))
    dist = stroke_distribution(saliency, no_ink, 0.3)                # falls back to saliency alone
    e1, e05 = np.exp(1 / 0.3), np.exp(0.5 / 0.3)
    np.testing.assert_allclose(dist, [[0, e1 / (e1 + e05)], [e05 / (e1 + e05), 0]], rtol=1e-12)
    uniform = stroke_distribution(np.zeros((2, 2)), no_ink, 0.3)     # then uniform
    np.testing.assert_array_equal(uniform, np.full((2, 2), 0.25))


# --- sampling and strokes ------------------------------------------------------------------------

def test_init_strokes_without_replacement_deterministic_and_on_positive_pixels():
    rng = np.random.default_rng(0)
    dist = np.zeros((224, 224))
    dist[50:60, 100:130] = rng.random((10, 30))                      # 300 candidate pixels
    dist /= dist.sum()
    a = init_strokes(dist, 64, CONFIG, 7)
    b = init_strokes(dist, 64, CONFIG, np.random.default_rng(7))
    c = init_strokes(dist, 64, CONFIG, 8)
    assert a.shape == (64, 4, 2) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    start = a[:, 0].numpy()
    assert np.all(start == np.round(start))                          # pixel indices (column, row)
    cols, rows = start[:, 0].astype(int), start[:, 1].astype(int)
    assert np.all(dist[rows, cols] > 0)                              # x is the column, y the row
    assert len(set(zip(cols, rows))) == 64                           # without replacement


def test_random_walk_steps_are_bounded_and_use_the_full_range():
    dist = np.full((224, 224), 1.0 / 224 ** 2)
    points = init_strokes(dist, 500, CONFIG, 0).double()
    steps = (points[:, 1:] - points[:, :-1]).abs()
    bound = 0.025 * 224                                              # 5.6 px per axis
    assert steps.max() <= bound + 1e-5
    assert steps.max() > 0.99 * bound                                # not a smaller walk
    assert steps.mean() == pytest.approx(bound / 2, rel=0.05)        # uniform in [-5.6, 5.6]


def test_fewer_positive_pixels_than_strokes():
    dist = np.zeros((16, 16))
    dist[3, 4], dist[10, 2] = 0.25, 0.75
    points = init_strokes(dist, 5, CONFIG, 1)
    starts = {tuple(p) for p in points[:, 0].tolist()}
    assert points.shape == (5, 4, 2)
    assert starts == {(4.0, 3.0), (2.0, 10.0)}                       # both used, nothing else


# --- attention ----------------------------------------------------------------------------------

def test_manual_vit_forward_equals_stock_open_clip(vit):
    image = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        stock = vit(image)
        ours, attentions = vit_forward_with_attention(vit, image)
    torch.testing.assert_close(ours, stock, rtol=1e-4, atol=1e-5)
    assert len(attentions) == 12 and attentions[0].shape == (2, 12, 50, 50)
    torch.testing.assert_close(attentions[5].sum(-1), torch.ones(2, 12, 50))


def test_attention_probabilities_equal_the_modules_own_weights(vit):
    """Independent check: nn.MultiheadAttention's need_weights=True on each block's attention input."""
    image = clip_normalize(chelsea_target())
    inputs = []
    hooks = [b.ln_1.register_forward_hook(lambda m, i, o: inputs.append(o)) for b in vit.transformer.resblocks]
    try:
        with torch.no_grad():
            vit(image)
            stock = [b.attn(x, x, x, need_weights=True, average_attn_weights=True)[1]
                     for b, x in zip(vit.transformer.resblocks, inputs)]
    finally:
        for h in hooks:
            h.remove()
    with torch.no_grad():
        _, ours = vit_forward_with_attention(vit, image)
    for a, b in zip(ours, stock):
        torch.testing.assert_close(a.mean(1), b, rtol=1e-4, atol=1e-6)
    # the map from those weights: CLS row, patch columns, block mean, bicubic, min-max
    cls = torch.stack([w[0, 0, 1:] for w in stock]).mean(0).reshape(1, 1, 7, 7)
    up = F.interpolate(cls, size=224, mode="bicubic", align_corners=False)[0, 0].numpy()
    expected = (up - up.min()) / (up.max() - up.min())
    saliency = vit_attention_map(vit, image)
    assert saliency.shape == (224, 224) and saliency.dtype == np.float32
    assert saliency.min() == 0.0 and saliency.max() == 1.0
    np.testing.assert_allclose(saliency, expected, atol=1e-4)


def test_attention_map_other_canvas_size(vit):
    image = clip_normalize(chelsea_target())
    small = F.interpolate(image, size=112, mode="bicubic", align_corners=False)
    saliency = vit_attention_map(vit, small)
    assert saliency.shape == (112, 112) and saliency.min() == 0.0 and saliency.max() == 1.0


def test_saliency_map_end_to_end_on_chelsea(vit):
    target = chelsea_target()
    start = time.perf_counter()
    distribution, saliency, ink = saliency_map(vit, target, CONFIG)
    elapsed = time.perf_counter() - start
    assert elapsed < 5.0                                             # ~0.1 s on a quiet 2-core CPU
    assert distribution.shape == saliency.shape == ink.shape == (224, 224)
    assert distribution.sum() == pytest.approx(1.0, abs=1e-9)
    assert np.all(distribution[(saliency * ink) <= 0] == 0)
    assert np.all(distribution[(saliency * ink) > 0] > 0)
    np.testing.assert_array_equal(ink, xdog_ink_mask(clip_normalize(target), CONFIG))
    strokes = init_strokes(distribution, CONFIG.num_strokes, CONFIG, 0)
    cols, rows = strokes[:, 0, 0].long().numpy(), strokes[:, 0, 1].long().numpy()
    assert np.all(ink[rows, cols] == 1)


def test_saliency_map_on_a_blank_image_still_gives_a_distribution(vit):
    distribution, saliency, ink = saliency_map(vit, torch.ones(1, 3, 224, 224), CONFIG)
    assert ink.max() == 0.0
    assert distribution.sum() == pytest.approx(1.0, abs=1e-9)
    np.testing.assert_array_equal(distribution > 0, saliency > 0)    # the saliency fallback
    assert init_strokes(distribution, 16, CONFIG, 0).shape == (16, 4, 2)
