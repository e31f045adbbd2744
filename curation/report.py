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
from PIL import Image, ImageFilter, ImageStat

from curation import reasons
from curation.stats import HISTOGRAM_EDGES

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
        # What the preview cannot show by itself: why there is none, why no match, ...
        ("note", pa.string()),
    ]
)
THUMBNAIL_SIDE = 160
# Reasons whose gallery shows the image only blurred: a report is opened by people.
BLURRED_REASONS = frozenset({reasons.NSFW})


def preview(data: bytes, blur: bool = False) -> tuple[bytes | None, str]:
    """A small JPEG preview of an image and a note on what it shows ("" when nothing to
    say); (None, why) when it cannot be decoded."""
    try:
        im = Image.open(io.BytesIO(data))
        im.draft("RGB", (THUMBNAIL_SIDE * 2, THUMBNAIL_SIDE * 2))
        if im.mode not in _RESIZABLE:
            # Palettes resize with nearest neighbours only: converted first.
            im = im.convert("RGBA" if _has_alpha(im) else "RGB")
        im.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
        im, note = _displayable(im)
        if blur:
            im = im.filter(ImageFilter.GaussianBlur(radius=10))
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=80)
        return buf.getvalue(), note
    # A preview is best-effort: the record itself is already accounted for.
    except Exception as e:
        return None, f"no preview: the image does not decode ({type(e).__name__})"


def thumbnail(data: bytes, blur: bool = False) -> bytes | None:
    """A small JPEG preview of an image, or None if it cannot be decoded."""
    return preview(data, blur)[0]


_RESIZABLE = frozenset({"1", "L", "LA", "RGB", "RGBA", "I", "F", "I;16", "I;16B", "I;16L"})


def _has_alpha(im: Image.Image) -> bool:
    return im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info


def _displayable(im: Image.Image) -> tuple[Image.Image, str]:
    """`im` as RGB the way a browser would show it, and a note when that hides something."""
    if im.mode in ("I", "F") or im.mode.startswith("I;16"):
        # 16-bit and 32-bit greys: Pillow's RGB conversion clips at 255, which turns a
        # 16-bit photo into a white or grey square. Scaled to 8 bits instead.
        if im.mode.startswith("I;16"):
            im, scale = im.convert("I"), 1 / 257
        else:
            hi = im.getextrema()[1]
            scale = 255 / hi if hi and hi > 255 else 1
        return im.point(lambda v: v * scale).convert("L").convert("RGB"), ""
    if _has_alpha(im):
        rgba = im.convert("RGBA")
        transparent = rgba.getextrema()[3][1] == 0
        note = "fully transparent: nothing is drawn" if transparent else ""
        # Transparent pixels keep arbitrary colours (often black): shown on a checkerboard.
        board = _checkerboard(rgba.size)
        board.alpha_composite(rgba)
        return board.convert("RGB"), note
    return im.convert("RGB"), ""


def _checkerboard(size: tuple[int, int], cell: int = 8) -> Image.Image:
    board = Image.new("RGBA", size, (255, 255, 255, 255))
    for y in range(0, size[1], cell):
        for x in range((y // cell % 2) * cell, size[0], 2 * cell):
            board.paste((214, 214, 214, 255), (x, y, x + cell, y + cell))
    return board


# A flat colour stays within a few levels through JPEG or a dithered palette (std. dev.
# under 4); a photograph's is tens of levels.
_FLAT_STDDEV = 4.0


def flat_colour(jpeg: bytes) -> str | None:
    """The colour (#rrggbb) of a preview that is one colour throughout, else None."""
    stat = ImageStat.Stat(Image.open(io.BytesIO(jpeg)).convert("RGB"))
    if max(stat.stddev) >= _FLAT_STDDEV:
        return None
    return "#{:02x}{:02x}{:02x}".format(*(round(m) for m in stat.mean))


def sort_samples(samples: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Samples in a fixed order: kept first, then by reason, each by uid."""
    return sorted(samples, key=lambda s: (s["group"] != "kept", s["group"], s["uid"]))


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


def _gallery(title: str, samples: Sequence[Mapping[str, Any]], blurred: bool = False) -> str:
    figures = []
    for s in samples:
        img = _thumb(s.get("thumbnail"), s.get("note") or "", blurred)
        if s.get("match_thumbnail"):
            # The rejected image beside the one it duplicates.
            other = "kept image" if s["group"] == reasons.NEAR_DUPLICATE else "duplicates"
            img = (
                f"<div class=pair><div>{img}<small>this image</small></div>"
                f"<div>{_thumb(s['match_thumbnail'], '', blurred)}<small>{other}</small></div>"
                "</div>"
            )
        detail = f"<small>{html.escape(s.get('detail') or '')}</small>" if s.get("detail") else ""
        figures.append(
            f"<figure>{img}<figcaption>{html.escape(s['alt_text'])}{detail}</figcaption></figure>"
        )
    return (
        f"<section><h3>{html.escape(title)}</h3><div class=grid>{''.join(figures)}</div></section>"
    )


def _thumb(jpeg: bytes | None, note: str, blurred: bool) -> str:
    """A preview with its note printed on it; a flat colour always gets one."""
    if not jpeg:
        return f"<div class=noimg>{html.escape(note or 'no preview')}</div>"
    colour = None if blurred else flat_colour(jpeg)
    if colour and not note:
        note = f"one colour throughout ({colour}): the image itself is blank"
    elif colour:
        note = f"{note}; one colour throughout ({colour})"
    flag = f"<span class=flag>{html.escape(note)}</span>" if note else ""
    return f"<div class=thumb>{_img(jpeg)}{flag}</div>"


def _img(jpeg: bytes) -> str:
    return f'<img alt="" src="data:image/jpeg;base64,{base64.b64encode(jpeg).decode()}">'


# Rejected alt-texts longer than this are cut in the tables (the samples file has them whole).
_TEXT_SHOWN = 300


def _text_cell(text: str) -> str:
    if len(text) <= _TEXT_SHOWN:
        return html.escape(text)
    return f"{html.escape(text[:_TEXT_SHOWN])}<span class=muted>… ({len(text):,} chars)</span>"


# The dataset-wide text rules whose stats.json table says more than a sample can.
_TOP_TABLE_HEADS = {
    reasons.TEXT_ON_MANY_IMAGES: ("most frequent texts", "text, as the rule counts it", "images"),
    reasons.TEXT_RARE_TOKEN: (
        "rare tokens",
        "token (each text's first rare one, alphabetically)",
        "texts",
    ),
}


def _top_table(reason: str, table: Mapping[str, Any] | None) -> str:
    if not table or not table.get("rows"):
        return ""
    caption, key_head, count_head = _TOP_TABLE_HEADS[reason]
    rows = "".join(f"<tr><td>{_text_cell(key)}</td><td>{n:,}</td></tr>" for key, n in table["rows"])
    rest = table.get("rest", {})
    if rest.get("keys"):
        rows += (
            f"<tr class=muted><td>{rest['keys']:,} more</td><td>{sum(rest['counts']):,}</td></tr>"
        )
    return (
        f"<table class=texts><caption>{caption}</caption>"
        f"<tr><th>{key_head}</th><th>{count_head}</th></tr>{rows}</table>"
    )


def _text_rejects(stats: Mapping[str, Any], samples: Sequence[Mapping[str, Any]]) -> str:
    """A section per text reason: its top table, if any, and the sampled alt-texts."""
    by_reason = stats["rejected"].get(reasons.STAGE_TEXT, {})
    tops = stats.get("text_rejects", {})
    parts = []
    for reason, n in sorted(by_reason.items(), key=lambda kv: (-kv[1], kv[0])):
        group = [s for s in samples if s["group"] == reason]
        if group:
            rows = "".join(
                f"<tr><td>{_text_cell(s['alt_text'])}</td>"
                f"<td>{html.escape(s.get('detail') or '')}</td></tr>"
                for s in group
            )
            sample = (
                f"<table class=texts><caption>a sample of {len(group)}</caption>"
                f"<tr><th>alt-text</th><th>detail</th></tr>{rows}</table>"
            )
        else:
            sample = "<p class=muted>no sample stored (report_samples.parquet has none)</p>"
        top = _top_table(reason, tops.get(reason)) if reason in _TOP_TABLE_HEADS else ""
        parts.append(
            f"<section><h3>{html.escape(reason)} ({n:,} rejected)</h3>"
            f"<div class=tables>{top}{sample}</div></section>"
        )
    return "".join(parts) or "<p class=muted>the text rules removed nothing</p>"


def _yield_table(title: str, table: Mapping[str, Any] | None) -> str:
    """Kept and rejected per key, with the kept share as a bar."""
    if not table or not table.get("rows"):
        return f"<h3>{html.escape(title)}</h3><p class=muted>nothing to show</p>"
    rows = list(table["rows"])
    rest = table.get("rest", {})
    if rest.get("keys"):
        rows.append([f"{rest['keys']:,} more", *rest["counts"]])
    body = []
    for key, kept, rejected in rows:
        total = kept + rejected
        share = kept / total if total else 0.0
        bar = (
            f'<svg width="120" height="12" role="img"><rect width="120" height="12" '
            f'fill="#d0643b"/><rect width="{round(120 * share)}" height="12" fill="#6a9f58"/></svg>'
        )
        body.append(
            f"<tr><td>{html.escape(str(key) or '(no host)')}</td><td>{kept:,}</td>"
            f"<td>{rejected:,}</td><td>{100 * share:.1f}%</td><td>{bar}</td></tr>"
        )
    return (
        f"<h3>{html.escape(title)}</h3><table class=yield><tr><th></th><th>kept</th>"
        f"<th>rejected</th><th>kept share</th><th></th></tr>{''.join(body)}</table>"
    )


def _histograms(dist: Mapping[str, Any]) -> str:
    # In the order of HISTOGRAM_EDGES, whatever the order of the document's keys: stats.json
    # is written with sorted keys, and a rebuilt page must equal the run's own.
    hists = dist.get("histograms", {})
    names = [n for n in HISTOGRAM_EDGES if n in hists] + sorted(set(hists) - set(HISTOGRAM_EDGES))
    return "".join(_histogram(n, hists[n]) for n in names)


_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;max-width:1200px}
h1{font-size:22px}h2{font-size:18px;margin-top:32px}h3{font-size:15px}h4{margin:4px 0}
svg text{font:12px system-ui,sans-serif;fill:#333}.muted{color:#888}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(170px,1fr));gap:12px}
figure{margin:0;border:1px solid #ddd;border-radius:6px;padding:6px;background:#fafafa}
figure img{display:block;max-width:160px;max-height:160px;margin:auto}
figcaption{font-size:12px;margin-top:4px;word-break:break-word}
figcaption small{display:block;color:#888}
.thumb{position:relative;width:fit-content;margin:auto}
.flag{position:absolute;left:0;right:0;bottom:0;padding:2px 4px;font-size:11px;
background:rgba(176,0,32,.85);color:#fff}
.noimg{width:160px;min-height:90px;background:#eee;color:#666;text-align:center;
font-size:12px;padding:34px 4px;box-sizing:border-box;margin:auto}
.pair{display:flex;gap:4px}.pair>div{flex:1;text-align:center}.pair img{max-width:80px}
.pair small{display:block;color:#888;font-size:11px}
.hists{display:flex;flex-wrap:wrap;gap:16px}table{border-collapse:collapse}
td,th{padding:2px 10px;text-align:right}td:first-child,th:first-child{text-align:left}
.tables{display:flex;flex-wrap:wrap;gap:24px;align-items:flex-start}
table.texts{max-width:760px}table.texts td{text-align:left;vertical-align:top;
border-top:1px solid #eee;word-break:break-word}
table.texts caption{text-align:left;color:#888;font-size:12px}
table.yield td{border-top:1px solid #eee}
"""


def build_html(
    stats: Mapping[str, Any], samples: Sequence[Mapping[str, Any]], title: str = "curation report"
) -> str:
    """The whole report as one HTML document; images are inline, nothing is fetched.

    The same stats and samples give the same bytes, in whatever order they come (the run
    writes the page from its own values, `curate report` from stats.json and the samples file).
    """
    samples = sort_samples(samples)
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
        sorted((k, v) for k, v in stats.get("extract", {}).items() if k != reasons.CANDIDATES),
        color="#999",
    )
    dead = ""
    if stats.get("dead_letter"):
        dead = (
            "<h3>dead letters: exceptions that escaped a step (OUTPUT/dead_letter/)</h3>"
            + _bars(sorted(stats["dead_letter"].items()), color="#b00020")
        )
    dist = stats.get("distributions", {})
    hists = _histograms(dist)
    langs = dist.get("categories", {}).get("text_lang", {})
    lang_bars = _bars(sorted(langs.items(), key=lambda kv: (-kv[1], kv[0]))[:20], color="#8a5fc2")
    hosts = stats.get("top_hosts", {})
    host_bars = _bars([(h, n) for h, n in hosts.get("kept", [])][:20], color="#8a5fc2")
    yields = stats.get("yield", {})
    yield_tables = _yield_table("by alt-text language", yields.get("language")) + _yield_table(
        "by image host", yields.get("host")
    )
    text_groups = set(stats["rejected"].get(reasons.STAGE_TEXT, {}))
    kept = [s for s in samples if s["group"] == "kept"]
    galleries = _gallery(f"kept ({totals['kept']:,}): a sample", kept)
    for reason in sorted({s["group"] for s in samples} - {"kept"} - text_groups):
        group = [s for s in samples if s["group"] == reason]
        blurred = reason in BLURRED_REASONS
        galleries += _gallery(
            f"rejected: {reason}{' (blurred)' if blurred else ''}", group, blurred
        )
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
<h2>What the text rules removed</h2>
<p class=muted>Per reason, the rejected alt-texts with the smallest uids (uids are hashes:
a uniform sample), as written in the page.</p>{_text_rejects(stats, samples)}
<h2>Yield</h2>
<p class=muted>Kept and rejected candidates per alt-text language and per image host, the
largest first. The text rules run before language ID: what they reject has no language.</p>
{yield_tables}
<h2>Extraction</h2>{extraction}
<h2>Kept records</h2><div class=hists>{hists}</div>
<h3>languages</h3>{lang_bars}<h3>top hosts</h3>{host_bars}
<h2>Galleries</h2>{galleries}
</body></html>
"""
