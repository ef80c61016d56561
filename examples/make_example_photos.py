"""Draw the demo's bundled "photos": a yellow striped star, seen five ways.

The built-in model cannot see real photos (no SD weights can be shipped), so the demo concept is a
drawn object: same shape, colour and texture, with varying position, size and rotation, like a few
phone shots of one toy. Run this to regenerate sdk/zoodip/data/example_concept/.
"""
from __future__ import annotations

import math
from pathlib import Path

from PIL import Image, ImageDraw

SIZE = 128
OUT = Path(__file__).resolve().parents[1] / "sdk" / "zoodip" / "data" / "example_concept"


def star(cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    points = []
    for k in range(10):
        radius = r if k % 2 == 0 else r * 0.45
        a = angle + k * math.pi / 5
        points.append((cx + radius * math.sin(a), cy - radius * math.cos(a)))
    return points


def draw(cx: float, cy: float, r: float, angle: float, background: tuple[int, int, int]) -> Image.Image:
    image = Image.new("RGB", (SIZE, SIZE), background)
    mask = Image.new("L", (SIZE, SIZE), 0)
    ImageDraw.Draw(mask).polygon(star(cx, cy, r, angle), fill=255)
    stripes = Image.new("RGB", (SIZE, SIZE), (250, 210, 20))
    pen = ImageDraw.Draw(stripes)
    for x in range(-SIZE, 2 * SIZE, 12):
        pen.line([(x, 0), (x + SIZE, SIZE)], fill=(200, 90, 10), width=4)
    image.paste(stripes, (0, 0), mask)
    return image


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    views = [(64, 64, 44, 0.0), (58, 70, 38, 0.3), (70, 60, 40, -0.25), (64, 66, 50, 0.15), (60, 62, 34, 0.6)]
    backgrounds = [(40, 70, 160), (30, 60, 140), (50, 80, 170), (35, 65, 150), (45, 75, 165)]
    for i, ((cx, cy, r, a), bg) in enumerate(zip(views, backgrounds)):
        draw(cx, cy, r, a, bg).save(OUT / f"star_{i}.png", optimize=True)
    print(f"wrote {len(views)} images to {OUT}")


if __name__ == "__main__":
    main()
