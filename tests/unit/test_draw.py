"""One palette and one box style for the training plots and detect.py's images."""

from __future__ import annotations

import numpy as np
import torch

from yolodist.infer.annotate import annotate
from yolodist.utils.draw import colors, draw_box, text_color


def test_detect_draws_a_class_in_the_palette_colour_of_the_plots():
    image = np.zeros((64, 64, 3), np.uint8)  # BGR, as detect.py reads images
    drawn = annotate(image, torch.tensor([[10.0, 30.0, 40.0, 60.0, 0.9, 3.0]]), ["a", "b", "c", "d"], 2, True)
    assert tuple(int(v) for v in drawn[45, 10]) == colors(3, bgr=True)  # left edge, away from corners


def test_label_text_is_dark_on_light_tags_and_white_on_dark_ones():
    light, dark = colors(4), colors(0)  # CFD231 (yellow-green), FF3838 (red)
    assert text_color(light) == (0, 0, 0) and text_color(dark) == (255, 255, 255)
    for i in range(20):  # the same answer whichever channel order the image is in
        assert text_color(colors(i, bgr=True), bgr=True) == text_color(colors(i))


def test_the_tag_holds_text_of_the_chosen_colour():
    image = np.full((80, 120, 3), 255, np.uint8)  # white: any black pixel is text
    draw_box(image, (10, 40, 100, 70), "ab", colors(4), line_width=3)
    tag = image[:40].reshape(-1, 3)
    assert (tag == colors(4)).all(1).any() and (tag == 0).all(1).any()  # the fill and dark text on it
