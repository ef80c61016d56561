"""Line charts with Pillow only (no matplotlib): metric against forward passes, one line per method."""
from __future__ import annotations

import math
from typing import Sequence

from PIL import Image, ImageDraw, ImageFont

PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def _nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = min((m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw), default=raw)
    start = math.floor(lo / step) * step
    # start + i * step, not a running sum: a step below the values' float resolution would never move a sum
    n = min(int((hi - start) / step + 1e-9) + 1, 4 * count + 2)
    values = (start + i * step for i in range(n))
    return [round(value, 10) for value in values if lo - 1e-9 * step <= value <= hi + 1e-9 * step]


def _fmt(value: float) -> str:
    if abs(value) >= 1000:
        return f"{value / 1000:g}k"
    return f"{value:.3g}"


def line_panel(title: str, series: dict[str, Sequence[tuple[float, float]]], size: tuple[int, int] = (520, 360),
               x_label: str = "UNet forward passes", colors: dict[str, tuple[int, int, int]] | None = None,
               hlines: dict[str, float] | None = None) -> Image.Image:
    """One chart: ``series`` maps a label to (x, y) points; ``hlines`` draws labelled dashed levels."""
    width, height = size
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    left, right, top, bottom = 56, 130, 26, 40
    pts = [p for s in series.values() for p in s]
    ys = [y for _, y in pts] + list((hlines or {}).values())
    xs = [x for x, _ in pts]
    x_lo, x_hi = 0.0, max(xs + [1.0])
    y_lo, y_hi = (min(ys), max(ys)) if ys else (0.0, 1.0)
    pad = (y_hi - y_lo) * 0.08
    if pad <= 1e-9 * max(1.0, abs(y_hi)):  # flat (or flat up to float rounding): a visible band around it
        pad = 0.05
    y_lo, y_hi = y_lo - pad, y_hi + pad
    plot_w, plot_h = width - left - right, height - top - bottom

    def to_px(x: float, y: float) -> tuple[float, float]:
        return (left + (x - x_lo) / (x_hi - x_lo) * plot_w, top + (1 - (y - y_lo) / (y_hi - y_lo)) * plot_h)

    draw.text((left, 6), title, fill="black", font=font)
    draw.rectangle([left, top, left + plot_w, top + plot_h], outline=(90, 90, 90))
    for ty in _nice_ticks(y_lo, y_hi):
        _, py = to_px(0, ty)
        draw.line([left, py, left + plot_w, py], fill=(230, 230, 230))
        draw.text((4, py - 6), _fmt(ty), fill="black", font=font)
    for tx in _nice_ticks(x_lo, x_hi):
        px, _ = to_px(tx, y_lo)
        draw.line([px, top + plot_h, px, top + plot_h + 4], fill=(90, 90, 90))
        draw.text((px - 10, top + plot_h + 6), _fmt(tx), fill="black", font=font)
    draw.text((left + plot_w // 2 - 50, height - 16), x_label, fill="black", font=font)
    for label, level in (hlines or {}).items():
        _, py = to_px(0, level)
        for x0 in range(left, left + plot_w, 8):
            draw.line([x0, py, min(x0 + 4, left + plot_w), py], fill=(120, 120, 120))
        draw.text((left + 4, py - 12), label, fill=(100, 100, 100), font=font)
    colors = colors or {}
    for k, (label, points) in enumerate(series.items()):
        color = colors.get(label, PALETTE[k % len(PALETTE)])
        pixels = [to_px(x, y) for x, y in sorted(points)]
        if len(pixels) > 1:
            draw.line(pixels, fill=color, width=2)
        for px, py in pixels:
            draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=color)
        ly = top + 4 + 14 * k
        draw.line([left + plot_w + 8, ly + 6, left + plot_w + 26, ly + 6], fill=color, width=3)
        draw.text((left + plot_w + 30, ly), label[:16], fill="black", font=font)
    return image


def tile(panels: Sequence[Image.Image], columns: int = 2) -> Image.Image:
    w, h = panels[0].size
    rows = (len(panels) + columns - 1) // columns
    sheet = Image.new("RGB", (w * min(columns, len(panels)), h * rows), "white")
    for k, panel in enumerate(panels):
        sheet.paste(panel, ((k % columns) * w, (k // columns) * h))
    return sheet
