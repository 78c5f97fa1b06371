"""Line plots as inline SVG, so a report needs no JavaScript library and opens offline."""
from __future__ import annotations

import math
from html import escape

COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")
W, H = 360, 200
LEFT, RIGHT, TOP, BOTTOM = 56, 10, 24, 28
MAX_POINTS = 800  # per line; the full numbers are in the report's JSON block


def fmt(v: float) -> str:
    """Compact, for axes and tables: 4 significant digits."""
    if v is None or not math.isfinite(v):
        return str(v)
    if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
        return f"{v:.3e}"
    return f"{v:.4g}"


def thin(points: list[tuple[int, float]], limit: int = MAX_POINTS) -> list[tuple[int, float]]:
    if len(points) <= limit:
        return points
    stride = len(points) / limit
    kept = [points[int(i * stride)] for i in range(limit)]
    return kept if kept[-1] == points[-1] else kept + [points[-1]]


def line_plot(title: str, lines: list[tuple[str, list[tuple[int, float]]]], plot_id: str,
              x_label: str = "step", log_x: bool = False) -> str:
    """One SVG: each line is (label, [(step, value), ...]); non-finite values are gaps.
    log_x: a logarithmic x axis (x > 0), for spans such as 5 to 100 sampler steps."""
    if log_x:
        lines = [(label, [(math.log(x), y) for x, y in ps]) for label, ps in lines]
    pts = [(x, y) for _, ps in lines for x, y in ps if math.isfinite(y)]
    parts = [f'<svg class="plot" id="{escape(plot_id)}" xmlns="http://www.w3.org/2000/svg" '
             f'viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img">',
             f'<text x="{W / 2}" y="15" text-anchor="middle" class="title">{escape(title)}</text>']
    if not pts:
        parts.append(f'<text x="{W / 2}" y="{H / 2}" text-anchor="middle">no data</text></svg>')
        return "".join(parts)
    x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
    y0, y1 = min(p[1] for p in pts), max(p[1] for p in pts)
    if x1 == x0:
        x1 = x0 + 1
    if y1 == y0:
        y0, y1 = y0 - (abs(y0) or 1) * 0.05, y1 + (abs(y1) or 1) * 0.05
    pw, ph = W - LEFT - RIGHT, H - TOP - BOTTOM
    sx = lambda x: LEFT + (x - x0) / (x1 - x0) * pw
    sy = lambda y: TOP + (y1 - y) / (y1 - y0) * ph
    parts.append(f'<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" class="frame"/>')
    for k in range(5):
        y = y0 + (y1 - y0) * k / 4
        parts.append(f'<line x1="{LEFT}" x2="{LEFT + pw}" y1="{sy(y):.1f}" y2="{sy(y):.1f}" class="grid"/>'
                     f'<text x="{LEFT - 4}" y="{sy(y) + 4:.1f}" text-anchor="end">{fmt(y)}</text>')
    for k in range(3):
        x = x0 + (x1 - x0) * k / 2
        parts.append(f'<text x="{sx(x):.1f}" y="{H - 12}" text-anchor="middle">'
                     f'{fmt(round(math.exp(x) if log_x else x))}</text>')
    parts.append(f'<text x="{LEFT + pw / 2}" y="{H - 1}" text-anchor="middle" class="axis">{escape(x_label)}</text>')
    for i, (label, ps) in enumerate(lines):
        colour = COLOURS[i % len(COLOURS)]
        segments, cur = [], []
        for x, y in thin(ps):
            if math.isfinite(y):
                cur.append(f"{sx(x):.1f},{sy(y):.1f}")
            elif cur:
                segments.append(cur)
                cur = []
        if cur:
            segments.append(cur)
        for seg in segments:
            if len(seg) == 1:
                cx, cy = seg[0].split(",")
                parts.append(f'<circle cx="{cx}" cy="{cy}" r="2" fill="{colour}"><title>{escape(label)}</title></circle>')
            else:
                parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{" ".join(seg)}">'
                             f'<title>{escape(label)}</title></polyline>')
        if len(lines) > 1:
            parts.append(f'<text x="{LEFT + 6}" y="{TOP + 12 + 12 * i}" fill="{colour}">{escape(label)}</text>')
    parts.append("</svg>")
    return "".join(parts)
