"""The picture of the last 14 days: an SVG drawn on the server from the days' numbers.

Bars per day for the files sent, the files refused and the items denied, on one scale. Only
presentation attributes (fill, x, y ...): the page's Content-Security-Policy allows no style attribute,
and no script is needed to see it. Every number is formatted here, every text escaped.
"""

from __future__ import annotations

from collections.abc import Sequence

from markupsafe import Markup, escape

from gateway.web.data import Day

WIDTH, HEIGHT = 720, 240
LEFT, RIGHT, TOP, BOTTOM = 44, 8, 28, 36  # room for the scale, the legend and the dates
SERIES = (  # (what, Day attribute, colour): colours that stay apart in grey print too
    ("files sent", "sent", "#2e7d32"),
    ("files refused", "refused", "#c62828"),
    ("items denied", "items_denied", "#f9a825"),
)
LABEL = "Files sent, files refused and items denied per day, the last 14 days"


def svg(days: Sequence[Day]) -> Markup:
    """The chart as inline SVG, safe to put into the page as it is."""
    top = max([1, *(getattr(day, attribute) for day in days for _, attribute, _ in SERIES)])
    scale = _nice(top)
    plot_width, plot_height = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    slot = plot_width / max(len(days), 1)
    bar = slot * 0.8 / len(SERIES)
    parts = [
        f'<svg id="chart" role="img" aria-label="{escape(LABEL)}" xmlns="http://www.w3.org/2000/svg" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}">',
        f"<title>{escape(LABEL)}</title>",
        f'<rect x="0" y="0" width="{WIDTH}" height="{HEIGHT}" fill="#ffffff"/>',
    ]
    for step in range(5):  # the scale: 0, a quarter ... the top
        value = scale * step / 4
        y = TOP + plot_height - plot_height * step / 4
        parts.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{WIDTH - RIGHT}" y2="{y:.1f}" stroke="#dddddd"/>')
        parts.append(
            f'<text x="{LEFT - 4}" y="{y + 4:.1f}" text-anchor="end" font-size="11" fill="#333333">'
            f"{_number(value)}</text>"
        )
    for index, day in enumerate(days):
        x0 = LEFT + index * slot + slot * 0.1
        for place, (what, attribute, colour) in enumerate(SERIES):
            value = int(getattr(day, attribute))
            height = plot_height * value / scale
            parts.append(
                f'<rect class="bar" x="{x0 + place * bar:.1f}" y="{TOP + plot_height - height:.1f}" '
                f'width="{bar:.1f}" height="{height:.1f}" fill="{colour}">'
                f"<title>{escape(day.date.isoformat())}: {value} {escape(what)}</title></rect>"
            )
        parts.append(
            f'<text x="{x0 + slot * 0.4:.1f}" y="{HEIGHT - BOTTOM + 14}" text-anchor="middle" font-size="11" '
            f'fill="#333333">{escape(day.date.strftime("%d %b"))}</text>'
        )
    for place, (what, _, colour) in enumerate(SERIES):  # the legend
        x = LEFT + place * 150
        parts.append(f'<rect x="{x}" y="8" width="12" height="12" fill="{colour}"/>')
        parts.append(f'<text x="{x + 16}" y="18" font-size="12" fill="#111111">{escape(what)}</text>')
    parts.append(
        f'<line x1="{LEFT}" y1="{TOP + plot_height}" x2="{WIDTH - RIGHT}" y2="{TOP + plot_height}" stroke="#333333"/>'
    )
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - built above from numbers and escaped texts only


def _nice(top: int) -> int:
    """The scale's top: the smallest of 4, 8, 20, 40, 80, 200 ... (times a power of ten) that holds top."""
    magnitude = 1
    while True:
        for step in (4, 8, 20):
            if top <= step * magnitude:
                return step * magnitude
        magnitude *= 10


def _number(value: float) -> str:
    return str(int(value)) if value == int(value) else f"{value:.1f}"
