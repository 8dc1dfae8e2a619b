"""A preview people can look at: the chosen image m_w beside the rejected image m_l.

Two files from the first `n` rows (train, then eval): a PNG contact sheet drawn with Pillow,
and a self-contained HTML page (thumbnails inlined as data: URIs, every text HTML-escaped by
the template's autoescaping). An image that does not decode is drawn as a marked placeholder
rather than stopping the preview; `mdpo-data validate` reports it.
"""

from __future__ import annotations

import base64
import io
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
from PIL import Image, ImageDraw, ImageFont
from PIL.PngImagePlugin import PngInfo

from mdpo_data.format import schema
from mdpo_data.build.images import DEFAULT_MAX_PIXELS, load_image
from mdpo_data.format.manifest import Manifest, load_manifest
from mdpo_data.sources.records import BadRow
from mdpo_data.format.folder import PREVIEW, PREVIEW_MARK, FolderError, check_target, is_our_preview, write_owned
from mdpo_data.format.shards import read_shard

THUMB = 160  # px: longest side of an image in the contact sheet
HTML_THUMB = 320  # px: longest side of an image in the HTML page
COLUMNS = 2  # example panels per row of the contact sheet
PAD = 10
TEXT_WIDTH = 440  # px of wrapped text beside each image pair
FONT_SIZE = 13
LINE = FONT_SIZE + 3
# Lines given to each text field in a panel (the panel height is fixed so the grid lines up).
FIELD_LINES = {"question": 3, "chosen": 3, "rejected": 3, "ref": 2}
PREFIX = {"question": "Q: ", "chosen": "chosen: ", "rejected": "rejected: ", "ref": "ref logp: "}
COLORS = {"question": (0, 0, 0), "chosen": (0, 110, 0), "rejected": (170, 0, 0), "ref": (0, 0, 140)}
HTML_CHARS = 2000  # longest text shown in the HTML page


# ---------------------------------------------------------------------------------------------
# Rows
# ---------------------------------------------------------------------------------------------


def first_rows(directory: Path, n: int, manifest: Manifest) -> list[tuple[str, dict[str, Any]]]:
    """(split, row) for the first `n` rows, train first; only the shards needed are touched
    (each verified against the manifest's sha256 before Arrow reads it)."""
    from mdpo_data.format.integrity import verified_shards

    rows: list[tuple[str, dict[str, Any]]] = []
    for split in schema.SPLITS:
        for file in verified_shards(directory, manifest, split):
            if len(rows) >= n:
                return rows
            table = read_shard(file)
            rows += [(split, row) for row in table.slice(0, n - len(rows)).to_pylist()]
    if not rows:
        raise FileNotFoundError(f"{directory} holds no mdpo-data shards (train-*.arrow)")
    return rows


def decode(cell: list[dict[str, Any]], max_pixels: int) -> tuple[Image.Image, str]:
    """(image, "") or (a gray placeholder, why it failed) for an `images` cell."""
    try:
        image, _ = load_image(schema.image_bytes(cell), max_pixels=max_pixels)
        return image, ""
    except (BadRow, ValueError, TypeError) as error:
        return Image.new("RGB", (THUMB, THUMB), (200, 200, 200)), f"undecodable: {error}"


def example(split: str, row: dict[str, Any], max_pixels: int, scored: bool) -> dict[str, Any]:
    """The fields the sheet and the page show for one row."""
    chosen_image, chosen_error = decode(row["images"], max_pixels)
    rejected_image, rejected_error = decode(row["rejected_images"], max_pixels)
    ref = {key: row[column] for key, column in (
        ("chosen", schema.REF_CHOSEN), ("rejected", schema.REF_REJECTED),
        ("chosen_under_m_l", schema.REF_CHOSEN_REJECTED_IMAGE)) if row[column] is not None}
    if "chosen" in ref and "chosen_under_m_l" in ref:
        ref["image_gap"] = ref["chosen"] - ref["chosen_under_m_l"]
    return {
        "split": split,
        "example_id": row["example_id"],
        "source": f"{row['source']} #{row['source_id']}",
        "strategies": f"m_l: {row['rejected_image_strategy']}, y_l: {row['rejected_response_strategy']}",
        "question": schema.question_of(row["prompt"]),
        "chosen": schema.text_of(row["chosen"]),
        "rejected": schema.text_of(row["rejected"]),
        "images": (chosen_image, rejected_image),
        "errors": (chosen_error, rejected_error),
        "ref_line": ref_line(ref, scored),
    }


def ref_line(ref: dict[str, float], scored: bool) -> str:
    if ref:
        return "  ".join(f"{k} {v:.2f}" for k, v in ref.items())
    return "none: the scorer skipped this row" if scored else "not scored"


# ---------------------------------------------------------------------------------------------
# PNG contact sheet
# ---------------------------------------------------------------------------------------------


def wrap(text: str, font: ImageFont.ImageFont, width: int, max_lines: int) -> list[str]:
    """Greedy word wrap to `width` px; the last line ends with an ellipsis when cut.

    Linear in the text: no glyph is narrower than 1 px, so at most `max_lines * width`
    characters can show; the rest is cut (with an ellipsis) before any measuring.
    """
    limit = max_lines * width
    text = text[: 4 * limit]  # bound the whitespace normalisation too
    text = " ".join(text.split())
    if len(text) > limit:
        text = text[:limit] + "…"
    lines, current = [], ""
    for word in text.split(" "):
        candidate = f"{current} {word}".strip()
        if font.getlength(candidate) <= width:
            current = candidate
            continue
        if current:
            lines.append(current)
        current = word
        while font.getlength(current) > width:  # a word longer than the line: hard-break it
            cut = max(1, int(len(current) * width / font.getlength(current)) - 1)
            lines.append(current[:cut])
            current = current[cut:]
    lines.append(current)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        last = lines[-1]
        while last and font.getlength(last + " …") > width:
            last = last[:-1]
        lines[-1] = last + " …"
    return lines


def _panel_height() -> int:
    text_lines = 2 + sum(FIELD_LINES.values())  # id + strategies, then the fields
    return max(THUMB + LINE, text_lines * LINE) + 2 * PAD


def _draw_panel(sheet: Image.Image, x: int, y: int, ex: dict[str, Any], font) -> None:
    draw = ImageDraw.Draw(sheet)
    labels = ("m_w (chosen)", "m_l (rejected)")
    for k, (image, error, label) in enumerate(zip(ex["images"], ex["errors"], labels)):
        thumb = fit(image, THUMB)  # small images are scaled up too
        left = x + PAD + k * (THUMB + PAD)
        sheet.paste(thumb, (left + (THUMB - thumb.width) // 2, y + PAD + (THUMB - thumb.height) // 2))
        draw.text((left, y + PAD + THUMB + 2), "UNDECODABLE" if error else label,
                  fill=(200, 0, 0) if error else (90, 90, 90), font=font)
    tx = x + 3 * PAD + 2 * THUMB
    ty = y + PAD
    draw.text((tx, ty), f"{ex['split']} / {ex['example_id']}  ({ex['source']})", fill=(0, 0, 0), font=font)
    ty += LINE
    draw.text((tx, ty), ex["strategies"], fill=(90, 90, 90), font=font)
    ty += LINE
    texts = {"question": ex["question"], "chosen": ex["chosen"], "rejected": ex["rejected"],
             "ref": ex["ref_line"]}
    for field, max_lines in FIELD_LINES.items():
        for line in wrap(PREFIX[field] + texts[field], font, TEXT_WIDTH, max_lines):
            draw.text((tx, ty), line, fill=COLORS[field], font=font)
            ty += LINE


def contact_sheet(examples: list[dict[str, Any]], title: str) -> Image.Image:
    font = ImageFont.load_default(size=FONT_SIZE)
    panel_w = 4 * PAD + 2 * THUMB + TEXT_WIDTH
    panel_h = _panel_height()
    rows = -(-len(examples) // COLUMNS)
    header = LINE + 2 * PAD
    sheet = Image.new("RGB", (COLUMNS * panel_w, header + rows * panel_h), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((PAD, PAD), title, fill=(0, 0, 0), font=font)
    for i, ex in enumerate(examples):
        x, y = (i % COLUMNS) * panel_w, header + (i // COLUMNS) * panel_h
        draw.rectangle((x, y, x + panel_w - 1, y + panel_h - 1), outline=(210, 210, 210))
        _draw_panel(sheet, x, y, ex, font)
    return sheet


# ---------------------------------------------------------------------------------------------
# HTML page
# ---------------------------------------------------------------------------------------------


def fit(image: Image.Image, size: int) -> Image.Image:
    """`image` scaled to fit a size x size box, never below 1 px a side (a 30000x1 strip
    would round to 0 px high, which Pillow cannot make)."""
    scale = size / max(image.width, image.height)
    target = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(target, Image.Resampling.BICUBIC) if target != image.size else image


def data_uri(image: Image.Image, size: int = HTML_THUMB) -> str:
    """A PNG thumbnail as a data: URI (re-encoded, so any stored format displays)."""
    thumb = fit(image, size)
    buffer = io.BytesIO()
    thumb.save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def html_page(examples: list[dict[str, Any]], title: str) -> str:
    text = resources.files("data_cards").joinpath("preview.html.j2").read_text(encoding="utf-8")
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True,
                             lstrip_blocks=True)
    env.filters["clip"] = lambda s: s if len(s) <= HTML_CHARS else s[: HTML_CHARS - 1] + "…"
    shown = [{**ex, "uris": [data_uri(image) for image in ex["images"]]} for ex in examples]
    return env.from_string(text).render(title=title, examples=shown)


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------


def write_preview(directory: str | Path, n: int = 16, out: str | Path | None = None) -> tuple[Path, Path]:
    """Write preview.png and preview.html for the first `n` rows into `out` (default: DIR)."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    directory = Path(directory)
    manifest = load_manifest(directory)
    max_pixels = manifest.config.get("max_pixels") or DEFAULT_MAX_PIXELS
    examples = [example(split, row, max_pixels, manifest.scored) for split, row in first_rows(directory, n, manifest)]
    spec = manifest.rejected_image.spec if manifest.rejected_image else "?"
    title = f"{directory.name}: first {len(examples)} examples, rejected image {spec}"
    out_dir = _target(directory, out)
    png, page = out_dir / "preview.png", out_dir / "preview.html"
    buffer = io.BytesIO()
    info = PngInfo()
    info.add_text("Software", PREVIEW_MARK)  # how a later run recognises the file as ours
    contact_sheet(examples, title).save(buffer, "PNG", pnginfo=info)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_owned(out_dir, png, buffer.getvalue())
    write_owned(out_dir, page, html_page(examples, title).encode("utf-8"))
    return png, page


def _target(directory: Path, out: str | Path | None) -> Path:
    """The folder previews go to, checked by the ownership rule: new, empty, ours (the build
    folder, or one holding our previews); a preview.png/.html there that is not ours is kept."""
    out_dir = directory if out is None else check_target(out, "preview --out", PREVIEW)
    for name in PREVIEW.files:
        path = out_dir / name
        if (path.exists() or path.is_symlink()) and not is_our_preview(path):
            raise FolderError(f"{path} is not a preview mdpo-data wrote; refusing to overwrite it: "
                              "move it or pick another --out")
    return out_dir
