"""The filter report: a terminal table, and one self-contained HTML page (no network needed).

Everything is built from stats.json and the report samples (thumbnails already encoded),
so `curate report OUTPUT` can rebuild the page without rerunning anything.
"""

from __future__ import annotations

import base64
import html
import io
import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa
from PIL import Image, ImageFilter

from curation import reasons

REPORT_FILE = "report.html"
SAMPLES_FILE = "report_samples.parquet"
SAMPLES_SCHEMA = pa.schema(
    [
        ("group", pa.string()),  # "kept" or a reject reason
        ("uid", pa.string()),
        ("alt_text", pa.string()),
        ("image_url", pa.string()),
        ("detail", pa.string()),
        ("thumbnail", pa.binary()),  # JPEG, at most 160 px
        # The image a duplicate copies (an evaluation image as its index keeps it), JPEG.
        ("match_thumbnail", pa.binary()),
    ]
)
THUMBNAIL_SIDE = 160
# Reasons whose gallery shows the image only blurred: a report is opened by people.
BLURRED_REASONS = frozenset({reasons.NSFW})


def thumbnail(data: bytes, blur: bool = False) -> bytes | None:
    """A small JPEG preview of an image, or None if it cannot be decoded."""
    try:
        im = Image.open(io.BytesIO(data))
        im.draft("RGB", (THUMBNAIL_SIDE * 2, THUMBNAIL_SIDE * 2))
        im = im.convert("RGB")
        im.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
        if blur:
            im = im.filter(ImageFilter.GaussianBlur(radius=10))
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=80)
        return buf.getvalue()
    except Exception:  # a preview is best-effort: the record itself is already accounted for
        return None


def funnel_steps(stats: Mapping[str, Any]) -> list[tuple[str, int]]:
    """(label, remaining) after each stage, from the totals and per-stage rejections."""
    remaining = stats["totals"]["extracted"]
    steps = [("extracted", remaining)]
    for stage in _stages(stats):
        remaining -= sum(stats["rejected"][stage].values())
        steps.append((f"after {stage}", remaining))
    return steps


def funnel_table(stats: Mapping[str, Any]) -> str:
    """The funnel as a plain-text table: each stage, each reason, counts and shares."""
    extracted = max(1, stats["totals"]["extracted"])
    lines = [f"{'stage / reason':<40} {'count':>10} {'share':>8}"]
    lines.append(f"{'extracted candidates':<40} {stats['totals']['extracted']:>10} {'100.0%':>8}")
    for stage in _stages(stats):
        by_reason = stats["rejected"][stage]
        total = sum(by_reason.values())
        lines.append(f"{'rejected at ' + stage:<40} {total:>10} {100 * total / extracted:>7.1f}%")
        for reason, n in sorted(by_reason.items(), key=lambda kv: (-kv[1], kv[0])):
            lines.append(f"{'  ' + reason:<40} {n:>10} {100 * n / extracted:>7.1f}%")
    kept = stats["totals"]["kept"]
    lines.append(f"{'kept':<40} {kept:>10} {100 * kept / extracted:>7.1f}%")
    return "\n".join(lines)


def compare_table(a: Mapping[str, Any], b: Mapping[str, Any], names: tuple[str, str]) -> str:
    """Two runs side by side: every reason of either, counts and shares."""
    rows: list[tuple[str, int, int]] = [
        ("extracted", a["totals"]["extracted"], b["totals"]["extracted"])
    ]
    stages = list(dict.fromkeys([*_stages(a), *_stages(b)]))
    for stage in stages:
        ra, rb = a["rejected"].get(stage, {}), b["rejected"].get(stage, {})
        for reason in sorted(set(ra) | set(rb)):
            rows.append((f"{stage}: {reason}", ra.get(reason, 0), rb.get(reason, 0)))
    rows.append(("kept", a["totals"]["kept"], b["totals"]["kept"]))
    ea, eb = max(1, a["totals"]["extracted"]), max(1, b["totals"]["extracted"])
    head = f"{'':<44} {names[0][-20:]:>20} {names[1][-20:]:>20}"
    body = [
        f"{label:<44} {x:>10} {100 * x / ea:>8.1f}% {y:>10} {100 * y / eb:>8.1f}%"
        for label, x, y in rows
    ]
    return "\n".join([head, *body])


# --- HTML


def _bars(
    items: Sequence[tuple[str, int]], width: int = 520, color: str = "#3b7dd8", label_w: int = 210
) -> str:
    """A horizontal bar chart as inline SVG."""
    if not items:
        return "<p class=muted>nothing to show</p>"
    top = max(1, max(n for _, n in items))
    row = 22
    height = row * len(items) + 4
    parts = [f'<svg width="{label_w + width + 80}" height="{height}" role="img">']
    for i, (label, n) in enumerate(items):
        y = i * row + 2
        w = max(1, int(width * n / top)) if n else 0
        parts.append(
            f'<text x="{label_w - 6}" y="{y + 15}" text-anchor="end">{html.escape(label)}</text>'
            f'<rect x="{label_w}" y="{y + 3}" width="{w}" height="{row - 6}" fill="{color}"/>'
            f'<text x="{label_w + w + 6}" y="{y + 15}">{n:,}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _histogram(name: str, hist: Mapping[str, Any]) -> str:
    edges, counts = hist["edges"], hist["counts"]
    labels = []
    for lo, hi in itertools.pairwise(edges):
        labels.append(f"≥ {_num(lo)}" if hi is None else f"{_num(lo)} – {_num(hi)}")
    items = list(zip(labels, counts, strict=True))
    chart = _bars(items, 170, "#6a9f58", label_w=110)
    return f"<div class=hist><h4>{html.escape(name)}</h4>{chart}</div>"


def _num(x: float) -> str:
    if x >= 1e6 and x % 1e5 == 0:
        return f"{x / 1e6:g}M"
    if x >= 1e4 and x % 1e3 == 0:
        return f"{x / 1e3:g}k"
    return f"{x:g}"


STAGE_ORDER = ("text", "fetch", "image")


def _stages(stats: Mapping[str, Any]) -> list[str]:
    """The stages with rejections, in pipeline order."""
    known = [s for s in STAGE_ORDER if s in stats["rejected"]]
    return known + sorted(set(stats["rejected"]) - set(known))


def _gallery(title: str, samples: Sequence[Mapping[str, Any]]) -> str:
    figures = []
    for s in samples:
        thumb = s.get("thumbnail")
        img = _img(thumb) if thumb else "<div class=noimg>no preview</div>"
        if s.get("match_thumbnail"):
            # The rejected image beside the one it duplicates.
            img = (
                f"<div class=pair><div>{img}<small>this image</small></div>"
                f"<div>{_img(s['match_thumbnail'])}<small>duplicates</small></div></div>"
            )
        detail = f"<small>{html.escape(s.get('detail') or '')}</small>" if s.get("detail") else ""
        figures.append(
            f"<figure>{img}<figcaption>{html.escape(s['alt_text'])}{detail}</figcaption></figure>"
        )
    return (
        f"<section><h3>{html.escape(title)}</h3><div class=grid>{''.join(figures)}</div></section>"
    )


def _img(jpeg: bytes) -> str:
    return f'<img alt="" src="data:image/jpeg;base64,{base64.b64encode(jpeg).decode()}">'


_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;max-width:1200px}
h1{font-size:22px}h2{font-size:18px;margin-top:32px}h3{font-size:15px}h4{margin:4px 0}
svg text{font:12px system-ui,sans-serif;fill:#333}.muted{color:#888}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(170px,1fr));gap:12px}
figure{margin:0;border:1px solid #ddd;border-radius:6px;padding:6px;background:#fafafa}
figure img{display:block;max-width:160px;max-height:160px;margin:auto}
figcaption{font-size:12px;margin-top:4px;word-break:break-word}
figcaption small{display:block;color:#888}
.noimg{width:160px;height:90px;background:#eee;color:#999;text-align:center;line-height:90px}
.pair{display:flex;gap:4px}.pair>div{flex:1;text-align:center}.pair img{max-width:80px}
.pair small{display:block;color:#888;font-size:11px}
.hists{display:flex;flex-wrap:wrap;gap:16px}table{border-collapse:collapse}
td,th{padding:2px 10px;text-align:right}td:first-child,th:first-child{text-align:left}
"""


def build_html(
    stats: Mapping[str, Any], samples: Sequence[Mapping[str, Any]], title: str = "curation report"
) -> str:
    """The whole report as one HTML document; images are inline, nothing is fetched."""
    totals = stats["totals"]
    funnel = _bars(funnel_steps(stats))
    stages = "".join(
        f"<h3>rejected at {html.escape(stage)}</h3>"
        + _bars(
            sorted(stats["rejected"][stage].items(), key=lambda kv: (-kv[1], kv[0])),
            color="#d0643b",
        )
        for stage in _stages(stats)
    )
    extraction = _bars(
        [(k, v) for k, v in stats.get("extract", {}).items() if k != reasons.CANDIDATES],
        color="#999",
    )
    dead = ""
    if stats.get("dead_letter"):
        dead = (
            "<h3>dead letters: exceptions that escaped a step (OUTPUT/dead_letter/)</h3>"
            + _bars(sorted(stats["dead_letter"].items()), color="#b00020")
        )
    dist = stats.get("distributions", {})
    hists = "".join(_histogram(n, h) for n, h in dist.get("histograms", {}).items())
    langs = dist.get("categories", {}).get("text_lang", {})
    lang_bars = _bars(sorted(langs.items(), key=lambda kv: (-kv[1], kv[0]))[:20], color="#8a5fc2")
    hosts = stats.get("top_hosts", {})
    host_bars = _bars([(h, n) for h, n in hosts.get("kept", [])][:20], color="#8a5fc2")
    kept = [s for s in samples if s["group"] == "kept"]
    galleries = _gallery(f"kept ({totals['kept']:,}): a sample", kept)
    for reason in sorted({s["group"] for s in samples} - {"kept"}):
        group = [s for s in samples if s["group"] == reason]
        note = " (blurred)" if reason in BLURRED_REASONS else ""
        galleries += _gallery(f"rejected: {reason}{note}", group)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy"
 content="default-src 'none'; img-src data:; style-src 'unsafe-inline'">
<title>{html.escape(title)}</title><style>{_CSS}</style></head>
<body>
<h1>{html.escape(title)}</h1>
<p>extracted <b>{totals["extracted"]:,}</b> candidates; kept <b>{totals["kept"]:,}</b>,
rejected <b>{totals["rejected"]:,}</b>; the files balance: <b>{totals["balanced"]}</b>.</p>
<h2>Funnel</h2>{funnel}{dead}
<h2>What each rule removed</h2>{stages}
<h2>Extraction</h2>{extraction}
<h2>Kept records</h2><div class=hists>{hists}</div>
<h3>languages</h3>{lang_bars}<h3>top hosts</h3>{host_bars}
<h2>Galleries</h2>{galleries}
</body></html>
"""
