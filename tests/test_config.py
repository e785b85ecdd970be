"""Defaults are the reference's; presets trade what they say; bad values are clear errors."""

import pytest

from clipasso_engine.config import PRESETS, make_config
from clipasso_engine.errors import CODES, EngineError


def test_reference_defaults():
    c = make_config("paper")
    assert (c.num_strokes, c.canvas_size, c.stroke_half_width, c.stroke_width) == (16, 224, 1.5, 3.0)
    assert (c.num_iterations, c.seeds, c.lr, c.eval_every) == (2000, [0, 1000, 2000], 1.0, 10)
    assert (c.num_augs, c.perspective_distortion, c.crop_scale) == (4, 0.5, 0.8)
    assert c.conv_layer_weights == (0, 0, 1, 1, 0) and c.fc_loss_weight == 0.1
    assert c.saliency_temperature == 0.3 and c.random_walk_step * c.canvas_size == pytest.approx(5.6)
    assert (c.xdog_sigma, c.xdog_k, c.xdog_gamma, c.xdog_phi, c.xdog_epsilon) == (0.8, 10, 0.98, 200, -0.1)
    assert c.mask_background is False and c.fix_scale is False


def test_presets_are_cheaper_than_paper_and_documented():
    def work(c):
        return c.num_iterations * c.num_seeds * (1 + c.num_augs)
    paper = work(make_config("paper"))
    for name, preset in PRESETS.items():
        assert preset["doc"]
        if name != "paper":
            assert work(make_config(name)) < paper / 4


def test_overrides_win_and_none_is_ignored():
    c = make_config("fast", num_strokes=8, num_iterations=None)
    assert c.num_strokes == 8 and c.num_iterations == PRESETS["fast"]["num_iterations"]


@pytest.mark.parametrize("knobs", [dict(num_strokes=-1), dict(num_strokes=1025), dict(num_seeds=0), dict(device="tpu"),
                                   dict(backend="cairo"), dict(num_iterations=-1), dict(colour="red")])
def test_bad_values_are_bad_argument(knobs):
    with pytest.raises(EngineError) as err:
        make_config(**knobs)
    assert err.value.code == "bad_argument" and err.value.message


def test_unknown_preset_and_error_codes():
    with pytest.raises(EngineError, match="preset"):
        make_config("ultra")
    with pytest.raises(ValueError):
        EngineError("nope", "x")
    assert {"bad_image", "weights_missing", "cancelled"} <= set(CODES)

