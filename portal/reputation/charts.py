"""Server-rendered charts of reputation (inline SVG, no JavaScript): admin pages and the owner dashboard."""

from __future__ import annotations

from datetime import datetime

from django.utils.html import format_html
from django.utils.safestring import SafeString


def history_svg(points: list[tuple[datetime, float]], width: int = 480, height: int = 120) -> SafeString:
    """A line chart of ``(moment, score)`` points, score axis 0..1 with the threshold drawn dashed."""
    from django.conf import settings

    if not points:
        return format_html("<em>no history yet</em>")
    t0, t1 = points[0][0].timestamp(), points[-1][0].timestamp()
    span = max(t1 - t0, 1.0)

    def xy(at: datetime, score: float) -> str:
        x = 4 + (width - 8) * (at.timestamp() - t0) / span
        y = 4 + (height - 8) * (1.0 - min(max(score, 0.0), 1.0))
        return f"{x:.1f},{y:.1f}"

    line = " ".join(xy(at, score) for at, score in points)
    threshold_y = 4 + (height - 8) * (1.0 - settings.REPUTATION_THRESHOLD)
    return format_html(
        '<svg class="score-history" role="img" aria-label="score history" width="{}" height="{}" '
        'viewBox="0 0 {} {}"><rect width="100%" height="100%" fill="#f8f8f8"/>'
        '<line x1="0" x2="{}" y1="{}" y2="{}" stroke="#c33" stroke-dasharray="4 3"/>'
        '<polyline fill="none" stroke="#2a6" stroke-width="2" points="{}"/>'
        "<title>score {} .. {} (latest {})</title></svg>",
        width,
        height,
        width,
        height,
        width,
        f"{threshold_y:.1f}",
        f"{threshold_y:.1f}",
        line,
        f"{min(s for _, s in points):.2f}",
        f"{max(s for _, s in points):.2f}",
        f"{points[-1][1]:.2f}",
    )
