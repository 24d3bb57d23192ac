"""Renders the seven emotion emojis as RGBA PNGs from Noto Color Emoji (run once; the PNGs are committed).

.venv/bin/python -m emojis.render [--font PATH] [--size PX]
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

logger = logging.getLogger(__name__)

FONT_PATH = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
# Noto Color Emoji is a bitmap font: 109 px is the one size its CBDT strikes exist at.
FONT_SIZE = 109
OUT_DIR = Path(__file__).resolve().parent

# Chosen to read clearly at small sizes; the order follows common.classes.EMOTIONS.
EMOJI_BY_EMOTION: dict[str, str] = {
    "angry": "\U0001f620",  # angry face
    "disgust": "\U0001f922",  # nauseated face
    "fear": "\U0001f628",  # fearful face
    "happy": "\U0001f604",  # grinning face with smiling eyes
    "sad": "\U0001f622",  # crying face
    "surprise": "\U0001f62e",  # face with open mouth
    "neutral": "\U0001f610",  # neutral face
}


def render(char: str, font: ImageFont.FreeTypeFont) -> Image.Image:
    """One emoji on a transparent canvas, cropped to its visible pixels and padded to a square."""
    canvas = Image.new("RGBA", (FONT_SIZE * 2, FONT_SIZE * 2), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).text((FONT_SIZE // 2, FONT_SIZE // 2), char, font=font, embedded_color=True)
    bbox = canvas.getbbox()
    if bbox is None:
        raise RuntimeError(f"the font drew nothing for U+{ord(char):X}")
    glyph = canvas.crop(bbox)
    side = max(glyph.size)
    square = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    square.paste(glyph, ((side - glyph.width) // 2, (side - glyph.height) // 2))
    return square


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--font", type=Path, default=FONT_PATH)
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    font = ImageFont.truetype(str(args.font), FONT_SIZE)
    for emotion, char in EMOJI_BY_EMOTION.items():
        image = render(char, font)
        path = args.out / f"{emotion}.png"
        image.save(path, optimize=True)
        logger.info("wrote %s (%dx%d)", path, *image.size)


if __name__ == "__main__":
    main()
