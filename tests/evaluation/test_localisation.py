"""The pointing game and energy inside the box, on maps whose answer is known."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fracjax.evaluation.localisation import box_mask, energy_inside, localisation_scores, pointing_hit

BOX = [(0.25, 0.5, 0.5, 0.75)]  # rows 16..31, columns 32..47 of a 64x64 image


def _peak_at(y, x, size=64, width=3.0):
    yy, xx = np.mgrid[:size, :size]
    return np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * width**2))


def test_a_map_peaking_in_the_box_hits_and_one_peaking_outside_misses():
    assert pointing_hit(_peak_at(20, 40), BOX) == 1.0
    assert pointing_hit(_peak_at(50, 10), BOX) == 0.0
    assert pointing_hit(_peak_at(14, 40), BOX) == 0.0  # two pixels above the box
    assert pointing_hit(_peak_at(14, 40), BOX, tolerance=3) == 1.0
    assert pointing_hit(np.zeros((64, 64)), BOX) == 0.0  # points nowhere
    flat_top = np.zeros((64, 64))
    flat_top[20, 40] = flat_top[50, 10] = 1.0
    assert pointing_hit(flat_top, BOX) == 0.5


def test_energy_inside_is_the_share_of_mass_in_the_box():
    cam = np.zeros((64, 64))
    cam[16:32, 32:48] = 1.0  # exactly the box
    assert energy_inside(cam, BOX) == 1.0
    cam[0:16, 0:16] = 1.0  # as much again outside
    assert energy_inside(cam, BOX) == pytest.approx(0.5)
    assert energy_inside(-cam, BOX) == 0.0  # negative values carry no mass
    assert box_mask(BOX, 64, 64).sum() == 16 * 16


@settings(max_examples=40, deadline=None)
@given(y=st.integers(0, 63), x=st.integers(0, 63))
def test_the_hit_agrees_with_where_the_peak_is(y, x):
    inside = 16 <= y < 32 and 32 <= x < 48
    cam = np.zeros((64, 64, 1))
    cam[y, x, 0] = 0.7
    assert pointing_hit(cam, BOX) == float(inside)


def test_scores_over_images_with_intervals():
    cams = [_peak_at(20, 40)] * 6 + [_peak_at(50, 10)] * 2 + [_peak_at(1, 1)]
    boxes = [BOX] * 8 + [np.zeros((0, 4))]  # the last image has no box: left out
    out = localisation_scores(cams, boxes, samples=300)
    assert out["n"] == 8
    assert out["pointing_game"]["value"] == 0.75
    low, high = out["pointing_game"]["interval"]
    assert 0.3 < low <= 0.75 <= high <= 1.0
    assert 0.0 < out["energy_inside"]["value"] < 0.75
    # Chance: the box's share of the map's pixels (grown by the tolerance for the pointing game).
    share = box_mask(BOX, 64, 64).mean()
    assert out["chance"]["energy_inside"] == pytest.approx(share)
    assert out["chance"]["pointing_game"] == pytest.approx(share)
    grown = localisation_scores(cams, boxes, tolerance=3, samples=0)
    assert grown["chance"]["pointing_game"] == pytest.approx(box_mask(BOX, 64, 64, tolerance=3).mean())
    assert grown["chance"]["pointing_game"] > share and grown["pointing_game"]["interval"] is None


def test_bad_boxes_and_maps_are_refused():
    with pytest.raises(ValueError, match="within \\[0, 1\\]"):
        pointing_hit(np.ones((8, 8)), [(0.5, 0.5, 0.2, 0.9)])
    with pytest.raises(ValueError, match="finite \\(H, W\\)"):
        energy_inside(np.full((8, 8), np.nan), BOX)
    with pytest.raises(ValueError, match="2 maps for 1 sets"):
        localisation_scores([np.ones((8, 8))] * 2, [BOX])
