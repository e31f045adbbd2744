"""Generate ``sample/crawl.warc.gz``: a small, fictional crawl used as a test fixture.

It exercises alt-text extraction and the ALIGN text rules end to end: good and bad alt-texts,
<img> tags that are not candidates, relative/<base>/srcset/lazy-load URL resolution, entities,
three charsets, records a pipeline must skip, and one page captured twice. All hosts are under
the reserved example.org/.com/.net domains. The output is deterministic (fixed WARC-Dates,
uuid5 record ids, gzip mtime 0): running the script twice gives byte-identical files.

Expected outcome per page; names in [] are curation/reasons.py values, URLs are resolved.
1 https://www.example.org/wildlife/foxes.html (en, UTF-8; captured twice -> the second
  capture's candidates are [duplicate_capture])
  keep "a red fox sitting in the snow at dawn" -> https://www.example.org/wildlife/img/fox.jpg
       (the same src+alt again on the page -> [duplicate_on_page])
  keep "a barn owl perched on a fence post at dusk" -> https://www.example.org/images/owl.png
  keep "a barn owl in flight over a frosty meadow" -> https://cdn.example.net/d.jpg
  drop "logo" [text_placeholder; also too short], "IMG_0042.JPG" [text_filename],
       "spacer" [text_placeholder]; <img> without alt [no_alt_text]; alt="" [empty_alt_text]
2 https://blog.example.com/posts/2023/kitchen.html (en-GB, UTF-8); images under .../2023/
  keep "fish & chips served with mushy peas and lemon" (&amp;)
  keep "a bowl of fresh strawberries on a wooden table" (newlines, tabs, runs of spaces)
  keep "homemade crème brûlée with a caramelised sugar crust" (&egrave; &ucirc; &eacute;)
  keep "sunset over the harbour with fishing boats" (&nbsp; between words)
  keep "a plate of pasta with tomato sauce and fresh basil" -> src a-320.jpg
       (srcset "a-320.jpg 320w, a-1280.jpg 1280w": the widest is a-1280.jpg)
  keep "a loaf of sourdough bread cooling on a wire rack" -> data-src img/bread.jpg
       (its src is a data: placeholder)
  drop "a cat" [text_too_short], a 26-word alt [text_too_long], "photo.png" [text_filename];
       data: src, no data-src [data_uri]; javascript: src [unsupported_scheme]
3 https://gallery.example.com/index.html (no lang, UTF-8,
  <base href="https://static.example.com/assets/">)
  keep "snow covered peaks of the alps under a clear blue sky"
       -> https://static.example.com/assets/mountains/alps.jpg
  keep "a wooden rowing boat on a calm mountain lake" -> https://static.example.com/c.jpg
  keep "a narrow cobbled street in an old harbour town" -> https://static.example.com/b.png
  drop "224x224", "1920 x 1080" [text_dimensions]; "https://example.com/a.jpg" [text_url];
       "jpg" [text_filename: a bare extension]; "image", "alt img", "untitled",
       "thumbnail" [text_placeholder]
4 https://www.example.net/de/reisen.html (de, UTF-8)
  keep "Ein alter Leuchtturm an der stürmischen Nordseeküste"
  keep "Zwei Wanderer auf einem schmalen Pfad im Hochgebirge"
  drop "Bild" [text_too_short]
5 https://www.example.net/fr/cafe.html (fr, ISO-8859-1 only in the HTTP Content-Type)
  keep "une tasse de café crème sur une table en terrasse"
  keep "un croissant doré posé sur une assiette blanche"
  drop "café crème" [text_too_short]
6 https://www.example.net/de/winter.html (de, charset only in <meta charset="windows-1252">)
  keep "Der „Große Wagen“ über einem verschneiten Dorf im Schwarzwald" („ “ = cp1252 0x84 0x93)
  drop "Foto" [text_too_short]
7 https://www.example.com/ja/haru.html (ja, UTF-8)
  keep "富士山と桜の花が咲く春の風景" (no spaces: kept only if unigrams are not whitespace-split)
  drop "thumbnail" [text_placeholder]
8 https://www.example.com/ru/moskva.html (ru, UTF-8)
  keep "Красная площадь в Москве зимним вечером"
  drop "фото" [text_too_short]
Skipped records: warcinfo and request records [record_not_response]; 404
https://www.example.org/wildlife/missing.html and 301 http://www.example.org/wildlife/
[http_status_not_2xx]; text/css .../static/site.css and the image records [not_html].
Request records precede the responses of pages 1 (first capture), 2 and 3 and of the 404.

Images held in the archive (`sample_images`), for the image stage with --images-from archive:
kept: fox.jpg (solid grey baseline JPEG), owl.png, fish.jpg, brulee.jpg or bread.jpg,
a-1280.jpg, alps.jpg, leuchtturm.jpg, pfad.jpg (alps.jpg's bytes at another URL), tasse.jpg,
dorf.jpg, fuji.jpg, ploshchad.jpg. Rejected: berries.jpg 180x150 [image_too_small],
harbour.jpg 960x240 [image_aspect_ratio], one of brulee.jpg / bread.jpg (bread is brulee
brightened by 1) [near_duplicate], c.jpg truncated [image_unreadable], b.png is HTML
[not_an_image], d.jpg and croissant.jpg are not in the archive [not_in_archive].
"""

from __future__ import annotations

import argparse
import struct
import uuid
import zlib
from io import BytesIO
from pathlib import Path

from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

NAMESPACE = uuid.UUID("6f1c1e2a-9d7e-4c35-8a51-2b8f0e1d4c77")
DEFAULT_OUTPUT = Path(__file__).resolve().parent.parent / "sample" / "crawl.warc.gz"
HTTP_DATE = "Fri, 01 Mar 2024 10:00:00 GMT"
LONG_ALT = (
    "this is a very long description of a photograph that goes on and on about"
    " the weather the people the buildings the colours and everything else"
)  # 26 words

# Each page: "URL CONTENT-TYPE" on the first line, then the HTML body.
PAGES: list[str] = [
    """https://www.example.org/wildlife/foxes.html text/html; charset=utf-8
<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>Foxes in winter</title>
<link rel="stylesheet" href="/static/site.css"></head><body>
<img src="/static/logo.png" alt="logo">
<h1>Foxes in winter</h1>
<img src="img/fox.jpg" alt="a red fox sitting in the snow at dawn" width="300" height="250">
<p>Foxes hunt small mammals under the snow.</p>
<img src="img/fox.jpg" alt="a red fox sitting in the snow at dawn">
<img src="../images/owl.png" alt="a barn owl perched on a fence post at dusk">
<img src="//cdn.example.net/d.jpg" alt="a barn owl in flight over a frosty meadow">
<img src="/c.jpg" alt="IMG_0042.JPG">
<img src="img/spacer.gif" alt="spacer" width="1" height="1">
<img src="img/track.jpg">
<img src="img/divider.png" alt="">
</body></html>
""",
    f"""https://blog.example.com/posts/2023/kitchen.html text/html; charset=UTF-8
<!DOCTYPE html><html lang="en-GB"><head><meta charset="UTF-8"><title>Kitchen notes</title></head>
<body><article>
<img src="img/fish.jpg" alt="fish &amp; chips served with mushy peas and lemon">
<img src="img/berries.jpg" alt="  a  bowl of
     fresh strawberries\t on a wooden table  ">
<img src="img/brulee.jpg"
     alt="homemade cr&egrave;me br&ucirc;l&eacute;e with a caramelised sugar crust">
<img src="img/harbour.jpg" alt="sunset&nbsp;over&nbsp;the harbour with fishing boats">
<img src="a-320.jpg" srcset="a-320.jpg 320w, a-1280.jpg 1280w"
     sizes="(max-width: 600px) 320px, 1280px"
     alt="a plate of pasta with tomato sauce and fresh basil">
<img class="lazy" src="data:image/gif;base64,R0lGODlhAQABAAAAACw=" data-src="img/bread.jpg"
     alt="a loaf of sourdough bread cooling on a wire rack">
<img src="img/cat.jpg" alt="a cat">
<img src="img/long.jpg" alt="{LONG_ALT}">
<img src="img/photo.png" alt="photo.png">
<img src="data:image/png;base64,iVBORw0KGgo=" alt="a small inline icon of a spoon and fork">
<img src="javascript:void(0)" alt="a button that opens the recipe gallery viewer">
</article></body></html>
""",
    """https://gallery.example.com/index.html text/html; charset=utf-8
<!DOCTYPE html><html><head><meta charset="utf-8">
<base href="https://static.example.com/assets/"><title>Gallery</title></head><body>
<img src="mountains/alps.jpg" alt="snow covered peaks of the alps under a clear blue sky">
<img src="/c.jpg" alt="a wooden rowing boat on a calm mountain lake">
<img src="../b.png" alt="a narrow cobbled street in an old harbour town">
<img src="thumbs/1.jpg" alt="224x224">
<img src="wall/2.jpg" alt="1920 x 1080">
<img src="a.jpg" alt="https://example.com/a.jpg">
<img src="x.jpg" alt="jpg">
<img src="3.jpg" alt="image">
<img src="4.jpg" alt="alt img">
<img src="5.jpg" alt="untitled">
<img src="6.jpg" alt="thumbnail">
</body></html>
""",
    """https://www.example.net/de/reisen.html text/html; charset=utf-8
<!DOCTYPE html><html lang="de"><head><meta charset="utf-8"><title>Reisen</title></head><body>
<img src="/bilder/leuchtturm.jpg" alt="Ein alter Leuchtturm an der stürmischen Nordseeküste">
<img src="/bilder/pfad.jpg" alt="Zwei Wanderer auf einem schmalen Pfad im Hochgebirge">
<img src="/bilder/bild.jpg" alt="Bild">
</body></html>
""",
    """https://www.example.net/fr/cafe.html text/html; charset=ISO-8859-1
<!DOCTYPE html><html lang="fr"><head><title>Le café du coin</title></head><body>
<img src="images/tasse.jpg" alt="une tasse de café crème sur une table en terrasse">
<img src="images/croissant.jpg" alt="un croissant doré posé sur une assiette blanche">
<img src="images/menu.jpg" alt="café crème">
</body></html>
""",
    """https://www.example.net/de/winter.html text/html
<!DOCTYPE html><html lang="de"><head><meta charset="windows-1252"><title>Winter</title></head><body>
<img src="winter/dorf.jpg" alt="Der „Große Wagen“ über einem verschneiten Dorf im Schwarzwald">
<img src="winter/foto.jpg" alt="Foto">
</body></html>
""",
    """https://www.example.com/ja/haru.html text/html; charset=utf-8
<!DOCTYPE html><html lang="ja"><head><meta charset="utf-8"><title>春</title></head><body>
<img src="/ja/img/fuji.jpg" alt="富士山と桜の花が咲く春の風景">
<img src="/ja/img/t.jpg" alt="thumbnail">
</body></html>
""",
    """https://www.example.com/ru/moskva.html text/html; charset=utf-8
<!DOCTYPE html><html lang="ru"><head><meta charset="utf-8"><title>Москва</title></head><body>
<img src="/ru/img/ploshchad.jpg" alt="Красная площадь в Москве зимним вечером">
<img src="/ru/img/foto.jpg" alt="фото">
</body></html>
""",
]
PAGE_ENCODING = {4: "iso-8859-1", 5: "cp1252"}  # index in PAGES -> body encoding
REQUESTED = {0, 1, 2}  # pages that get a request record before the response


def _split(page: str) -> tuple[str, str, str]:
    """Split a PAGES entry into (url, content type, html)."""
    head, _, html = page.partition("\n")
    url, _, ctype = head.partition(" ")
    return url, ctype, html


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def make_png(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    """Return a valid solid-colour 8-bit RGB PNG."""
    row = b"\x00" + bytes(rgb) * width  # filter type 0 per scanline
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunks = [(b"IHDR", ihdr), (b"IDAT", zlib.compress(row * height, 9)), (b"IEND", b"")]
    return b"\x89PNG\r\n\x1a\n" + b"".join(_png_chunk(kind, data) for kind, data in chunks)


def make_pattern_png(width: int, height: int, seed: int, shift: int = 0) -> bytes:
    """A PNG of smooth, seed-dependent stripes: structure a perceptual hash can tell apart.

    Integer triangle waves only, so the bytes are the same on every platform; `shift`
    brightens every pixel slightly (a near-duplicate of the same seed).
    """
    fx, fy, gx, gy = 1 + seed % 3, 1 + (seed // 3) % 3, 1 + (seed // 2) % 4, 2 + seed % 2
    phase = 97 * seed

    def tri(t: int) -> int:
        return min(255, abs(t % 512 - 256))

    rows = []
    for y in range(height):
        pixels = bytearray()
        for x in range(width):
            a = tri(fx * x * 512 // width + fy * y * 512 // height + phase)
            b = tri(gx * x * 512 // width - gy * y * 512 // height + 2 * phase)
            pixels += bytes(
                (min(255, a + shift), min(255, b + shift), min(255, (a + b) // 2 + shift))
            )
        # PNG filter 1 (Sub): stripes have near-constant steps, which then compress well.
        sub = bytes(
            (pixels[i] - (pixels[i - 3] if i >= 3 else 0)) & 0xFF for i in range(len(pixels))
        )
        rows.append(b"\x01" + sub)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunks = [(b"IHDR", ihdr), (b"IDAT", zlib.compress(b"".join(rows), 9)), (b"IEND", b"")]
    return b"\x89PNG\r\n\x1a\n" + b"".join(_png_chunk(kind, data) for kind, data in chunks)


def make_jpeg(width: int, height: int, grey: int) -> bytes:
    """Return a valid solid-grey baseline JPEG (only DC coefficients are non-zero)."""
    dc = grey - 128  # quantised DC with all-8 quant table: 8 * (grey - 128) / 8
    cat = abs(dc).bit_length()
    assert cat > 0, "grey must differ from 128"
    # DC table: 2-bit codes "00" -> category `cat`, "01" -> category 0; AC: "0" -> EOB.
    dht_dc = bytes([0x00, 0, 2] + [0] * 14 + [cat, 0])
    dht_ac = bytes([0x10, 1] + [0] * 15 + [0])
    first = "00" + format(dc if dc > 0 else dc - 1 + (1 << cat), f"0{cat}b")[-cat:] + "0"
    n_blocks = -(-width // 8) * -(-height // 8)
    bits = first + "010" * (n_blocks - 1)
    bits += "1" * (-len(bits) % 8)
    scan = bytes(int(bits[i : i + 8], 2) for i in range(0, len(bits), 8))
    segments = [
        (0xFFE0, b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"),
        (0xFFDB, b"\x00" + bytes([8] * 64)),  # one quantisation table, all 8s
        (0xFFC0, struct.pack(">BHHBBBB", 8, height, width, 1, 1, 0x11, 0)),  # 1 component
        (0xFFC4, dht_dc),
        (0xFFC4, dht_ac),
        (0xFFDA, bytes([1, 1, 0x00, 0, 63, 0])),
    ]
    head = b"".join(struct.pack(">HH", mark, len(data) + 2) + data for mark, data in segments)
    return b"\xff\xd8" + head + scan.replace(b"\xff", b"\xff\x00") + b"\xff\xd9"


class SampleWriter:
    """Thin wrapper over WARCWriter that assigns deterministic ids and dates."""

    def __init__(self, out: BytesIO) -> None:
        self.writer = WARCWriter(out, gzip=True, warc_version="1.1")
        self.count = 0

    def write(
        self,
        rec_type: str,
        url: str,
        body: bytes = b"",
        http: StatusAndHeaders | None = None,
        headers: dict[str, str] | None = None,
    ) -> str:
        """Write one record; return its WARC-Record-ID."""
        self.count += 1
        rec_id = f"<urn:uuid:{uuid.uuid5(NAMESPACE, f'record-{self.count}')}>"
        minute, second = divmod(self.count, 60)
        date = f"2024-03-01T10:{minute:02d}:{second:02d}Z"
        headers = {"WARC-Record-ID": rec_id, "WARC-Date": date, **(headers or {})}
        warc_type = "application/warc-fields" if rec_type == "warcinfo" else ""
        rec = self.writer.create_warc_record(
            url, rec_type, BytesIO(body), len(body), warc_type, headers, http_headers=http
        )
        self.writer.write_record(rec)
        return rec_id

    def request(self, url: str) -> str:
        host, _, path = url.partition("://")[2].partition("/")
        fields = [("Host", host), ("User-Agent", "align-curation-sample/1.0"), ("Accept", "*/*")]
        http = StatusAndHeaders(f"GET /{path} HTTP/1.1", fields, is_http_request=True)
        return self.write("request", url, http=http)

    def response(
        self, url: str, status: str, ctype: str, body: bytes, location: str = "", **warc: str
    ) -> None:
        """Write an HTTP response; ``warc`` holds extra WARC headers (WARC_Date -> WARC-Date)."""
        fields = [("Date", HTTP_DATE), ("Server", "nginx"), ("Content-Type", ctype)]
        fields += [("Location", location)] if location else []
        fields.append(("Content-Length", str(len(body))))
        http = StatusAndHeaders(status, fields, protocol="HTTP/1.1")
        self.write("response", url, body, http, {k.replace("_", "-"): v for k, v in warc.items()})


def build(out: BytesIO) -> int:
    """Write all sample records to ``out``; return the number of records."""
    w = SampleWriter(out)
    info = b"software: align-curation scripts/make_sample_warc.py\r\n"
    info += b"format: WARC File Format 1.1\r\ndescription: fictional test crawl\r\n"
    w.write("warcinfo", "", info, headers={"WARC-Filename": "crawl.warc.gz"})
    pages = [_split(page) for page in PAGES]
    for i, (url, ctype, html) in enumerate(pages):
        warc = {"WARC_Concurrent_To": w.request(url)} if i in REQUESTED else {}
        w.response(url, "200 OK", ctype, html.encode(PAGE_ENCODING.get(i, "utf-8")), **warc)
    foxes_url, ctype, html = pages[0]  # the same page and content again, a week later
    w.response(foxes_url, "200 OK", ctype, html.encode(), WARC_Date="2024-03-08T09:30:00Z")
    missing = "https://www.example.org/wildlife/missing.html"
    req_id = w.request(missing)
    body = b"<!DOCTYPE html>\n<html lang='en'><body><h1>404 Not Found</h1></body></html>\n"
    w.response(
        missing, "404 Not Found", "text/html; charset=utf-8", body, WARC_Concurrent_To=req_id
    )
    moved = "http://www.example.org/wildlife/"
    w.response(moved, "301 Moved Permanently", "text/html", b"", location=foxes_url)
    css = b"body { font-family: sans-serif; }\nimg { max-width: 100%; }\n"
    w.response("https://www.example.org/static/site.css", "200 OK", "text/css", css)
    jpeg = make_jpeg(300, 250, 200)
    w.response("https://www.example.org/wildlife/img/fox.jpg", "200 OK", "image/jpeg", jpeg)
    for url, ctype, body in sample_images():
        w.response(url, "200 OK", ctype, body)
    return w.count


def sample_images() -> list[tuple[str, str, bytes]]:
    """The image responses: most kept images, plus one case for each image rule."""
    blog = "https://blog.example.com/posts/2023/"
    alps = make_pattern_png(320, 240, 7)
    brulee = make_pattern_png(320, 240, 3)
    owl = make_pattern_png(320, 240, 1)
    return [
        ("https://www.example.org/images/owl.png", "image/png", owl),
        (blog + "img/fish.jpg", "image/png", make_pattern_png(320, 240, 2)),  # mislabelled PNG
        (blog + "img/berries.jpg", "image/png", make_pattern_png(180, 150, 4)),  # too small
        (blog + "img/brulee.jpg", "image/png", brulee),
        (blog + "img/harbour.jpg", "image/png", make_pattern_png(960, 240, 5)),  # aspect 4
        (blog + "a-1280.jpg", "image/png", make_pattern_png(320, 240, 6)),
        # The same picture a little brighter: a near-duplicate of brulee.jpg.
        (blog + "img/bread.jpg", "image/png", make_pattern_png(320, 240, 3, shift=1)),
        ("https://static.example.com/assets/mountains/alps.jpg", "image/png", alps),
        ("https://static.example.com/c.jpg", "image/png", alps[: len(alps) // 3]),  # truncated
        ("https://static.example.com/b.png", "image/png", b"<html>not found</html>\n"),
        (
            "https://www.example.net/bilder/leuchtturm.jpg",
            "image/png",
            make_pattern_png(320, 240, 8),
        ),
        ("https://www.example.net/bilder/pfad.jpg", "image/png", alps),  # same bytes, other URL
        ("https://www.example.net/fr/images/tasse.jpg", "image/png", make_pattern_png(320, 240, 9)),
        ("https://www.example.net/de/winter/dorf.jpg", "image/png", make_pattern_png(320, 240, 10)),
        ("https://www.example.com/ja/img/fuji.jpg", "image/png", make_pattern_png(320, 240, 11)),
        (
            "https://www.example.com/ru/img/ploshchad.jpg",
            "image/png",
            make_pattern_png(320, 240, 12),
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args()
    buf = BytesIO()
    count = build(buf)  # fixed WARC-Filename: the bytes do not depend on --output
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_bytes(buf.getvalue())
    print(f"wrote {count} records, {len(buf.getvalue())} bytes to {args.output}")


if __name__ == "__main__":
    main()
