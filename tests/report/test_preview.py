"""The preview: a PNG contact sheet and a self-contained, escaped HTML page."""

from __future__ import annotations

import re

import pytest
from PIL import Image, ImageFont

from mdpo_data.report import preview
from mdpo_data.format.manifest import ManifestError
from mdpo_data.report.preview import wrap, write_preview
from card_fixtures import write_build


def test_sheet_and_page_show_the_first_n_examples(tmp_path):
    directory = write_build(tmp_path / "b")
    png, page = write_preview(directory, n=4, out=tmp_path / "prev")
    assert (png.name, page.name) == ("preview.png", "preview.html")

    sheet = Image.open(png)
    panel_w = 4 * preview.PAD + 2 * preview.THUMB + preview.TEXT_WIDTH
    header = preview.LINE + 2 * preview.PAD
    assert sheet.size == (preview.COLUMNS * panel_w, header + 2 * preview._panel_height())
    # the first panel's chosen image (a red circle, scaled up to the thumbnail) is drawn
    center = (preview.PAD + preview.THUMB // 2, header + preview.PAD + preview.THUMB // 2)
    r, g, b = sheet.convert("RGB").getpixel(center)
    assert r > 200 and g < 60 and b < 60

    html = page.read_text()
    assert html.count('src="data:image/png;base64,') == 8  # 4 examples x (m_w, m_l), inlined
    assert "http" not in html  # self-contained: nothing fetched
    assert "&lt;b&gt;bold&lt;/b&gt; &amp; more" in html and "<b>bold</b>" not in html
    assert re.findall(r"train / (train-\d+)", html) == [f"train-{i:04d}" for i in range(4)]
    assert "chosen -20.00" in html and "image_gap -0.30" in html
    assert "the scorer skipped this row" not in html  # rows 0-3 are scored


def test_a_row_the_scorer_skipped_says_so(tmp_path):
    _, page = write_preview(write_build(tmp_path / "b"), n=5, out=tmp_path / "p")
    assert page.read_text().count("none: the scorer skipped this row") == 1  # train-0004


def test_preview_defaults_to_the_build_folder_and_runs_past_train(tmp_path):
    directory = write_build(tmp_path / "b", scored=False)
    png, page = write_preview(directory, n=50)
    assert png.parent == directory and page.parent == directory
    html = page.read_text()
    ids = re.findall(r"(?:train|eval) / ((?:train|eval)-\d+)", html)
    assert ids == [f"train-{i:04d}" for i in range(5)] + ["eval-0000", "eval-0001"]
    assert "not scored" in html


def test_undecodable_image_is_a_placeholder_not_a_crash(tmp_path):
    def corrupt(split, rows):
        rows[0]["rejected_images"] = [{"bytes": b"\x89PNG not really", "path": None}]
        return rows

    directory = write_build(tmp_path / "b", edit=corrupt)
    png, page = write_preview(directory, n=2)
    html = page.read_text()
    assert html.count("undecodable: image_corrupt") == 1
    assert Image.open(png).size[0] > 0


def test_wrap_fits_the_width_and_marks_the_cut():
    font = ImageFont.load_default(size=preview.FONT_SIZE)
    text = "word " * 200 + "x" * 400
    lines = wrap(text, font, 200, 3)
    assert len(lines) == 3 and lines[-1].endswith("…")
    assert all(font.getlength(line) <= 200 for line in lines)
    long_word = wrap("y" * 300, font, 120, 100)
    assert "".join(long_word) == "y" * 300  # a word longer than a line is broken, not lost
    assert all(font.getlength(line) <= 120 for line in long_word)


def test_bad_arguments(tmp_path):
    with pytest.raises(ManifestError):
        write_preview(tmp_path)
    with pytest.raises(ValueError, match="n must be at least 1"):
        write_preview(write_build(tmp_path / "b"), n=0)
