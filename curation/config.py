"""The run configuration: one frozen object, built at the entry point, validated on construction.

Each field carries its help text and the source of its default (`metadata`), so the CLI,
the README table and config.yaml all speak of the same thing. Precedence: defaults, then
`--config FILE` (YAML), then command-line flags.
"""

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Self

import yaml

from curation import reasons
from curation.files import normalize_root
from curation.placeholders import DEFAULT_PLACEHOLDERS
from curation.shards import FORMATS as SHARD_FORMATS


def _opt(default: Any, help: str, source: str) -> Any:
    return field(default=default, metadata={"help": help, "source": source})


LANGUAGE_DETECTORS = ("langdetect", "cld2")
IMAGE_TRANSPORTS = ("auto", "spool", "shuffle")


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the offending key."""


@dataclass(frozen=True)
class CurationConfig:
    """Every tunable of a run, with ALIGN's values as defaults."""

    # --- Text rules (ALIGN, Jia et al. 2021, §3).
    min_unigrams: int = _opt(3, "reject alt-texts with fewer unigrams", "ALIGN §3: < 3 unigrams")
    max_unigrams: int = _opt(20, "reject alt-texts with more unigrams", "ALIGN §3: > 20 unigrams")
    placeholder_alt_texts: tuple[str, ...] = _opt(
        DEFAULT_PLACEHOLDERS,
        "alt-texts rejected as placeholders (whole-text match, comma-separated)",
        "ALIGN §3 ('alt img') plus CMS/editor defaults; see README",
    )
    text_rules: tuple[str, ...] = _opt(
        reasons.TEXT_REASONS,
        "text rules to apply, in order; the first that fails names the reason",
        "ALIGN §3; boilerplate before length so the ledger names the more specific reason",
    )

    # --- Dataset-wide text rules (ALIGN §3) and language.
    max_images_per_text: int = _opt(
        10,
        "reject alt-texts shared by more distinct images (0 disables)",
        "ALIGN §3: alt-texts shared by more than 10 images",
    )
    vocab_size: int = _opt(
        100_000_000,
        "vocabulary: the most frequent unigrams and bigrams of the run's raw alt-texts",
        "ALIGN §3: the 100 million most frequent unigrams and bigrams",
    )
    vocab_min_count: int = _opt(
        1,
        "vocabulary tokens must occur at least this often (1: every token, as at small "
        "scale the top-N keeps everything)",
        "ALIGN §3 implies 1; raise it on small crawls to see the rule act",
    )
    vocab_ngrams: int = _opt(
        2,
        "check unigrams (1) or unigrams and bigrams (2) of each alt-text against the vocabulary",
        "ALIGN §3: unigrams and bigrams",
    )
    detect_language: bool = _opt(
        True,
        "detect each kept alt-text's language (text_lang column)",
        "the issue tracker's language column; off saves the detector's time",
    )
    language_detector: str = _opt(
        "langdetect",
        "langdetect (seeded, deterministic) or cld2 (pycld2, compiled model, faster)",
        "langdetect: the common baseline; see BENCHMARKS.md for cld2",
    )
    languages: tuple[str, ...] = _opt(
        (),
        "keep only alt-texts detected in these languages (comma-separated; empty: all)",
        "ALIGN's multilingual model keeps every language",
    )

    # --- Images: where from, and ALIGN's image rules (§3).
    images_from: str = _opt(
        "auto",
        "archive (image records in the input archives), http, or auto (archive, else http)",
        "auto: a crawl that holds its images is curated offline",
    )
    min_image_side: int = _opt(
        200, "reject images whose shorter side is not above this", "ALIGN §3: shorter side > 200"
    )
    max_aspect_ratio: float = _opt(
        3.0, "reject images whose aspect ratio is not below this", "ALIGN §3: aspect ratio < 3"
    )
    max_texts_per_image: int = _opt(
        1000,
        "reject images with more distinct alt-texts (by URL before fetching, by hash after)",
        "ALIGN §3: images with more than 1000 alt-texts",
    )
    max_image_pixels: int = _opt(
        89_478_485,
        "images with more pixels (from the header) are refused as decompression bombs",
        "Pillow's own decompression-bomb warning limit",
    )
    nsfw: bool = _opt(True, "score images with the NSFW model", "ALIGN §3: remove pornography")
    nsfw_threads: int = _opt(
        -1,
        "onnxruntime threads per NSFW model: 0 one per core, -1 auto (one per core on the "
        "local in-memory runner, else 1, as many SDK threads share a Dataflow worker)",
        "measured: one per core is 0.59x the time of one thread on an idle 2-core machine",
    )
    nsfw_threshold: float = _opt(
        0.8,
        "reject images whose open_nsfw score is at or above this",
        "Yahoo open_nsfw README: scores above 0.8 are NSFW with high probability",
    )
    near_dup_distance: int = _opt(
        -1,
        "opt-in, not ALIGN's: reject images within this pHash Hamming distance of another "
        "kept image of the run (-1: off; 4 catches resized and re-encoded copies)",
        "off: ALIGN §3 removes duplicates of evaluation images only; 4 measured: copies <= 2, "
        "unrelated photos >= 20 (BENCHMARKS.md)",
    )
    eval_images: tuple[str, ...] = _opt(
        (),
        "evaluation images (paths or globs) whose duplicates and near-duplicates are removed; "
        "for large sets build an index once with `curate eval-index` and pass --eval-index",
        "ALIGN §3: duplicates of ILSVRC-2012, Flickr30K and MSCOCO test images",
    )
    eval_index: str = _opt(
        "",
        "an eval-duplicate index written by `curate eval-index` (path or gs:// URL)",
        "ALIGN §3; the two-stage matcher of filters/evaldup.py (BENCHMARKS.md, eval duplicates)",
    )
    resize_mode: str = _opt(
        "none",
        "stored image: none (original bytes), keep_ratio or center_crop (re-encoded JPEG)",
        "img2dataset's resize modes",
    )
    resize_max_side: int = _opt(
        512, "longest (keep_ratio) or only (center_crop) side when resizing", "DataComp's 512"
    )
    jpeg_quality: int = _opt(95, "JPEG quality when re-encoding", "img2dataset's default 95")
    encode_format: str = _opt(
        "original",
        "stored image format: original (JPEG, PNG and WebP without alpha kept as fetched; "
        "the rest transcoded to PNG if transparent, else JPEG), or jpg, png, webp (every "
        "image in that format: one type per tar)",
        "the formats open_clip's WebDataset filter and tf.io.decode_image read (issue #20)",
    )

    # --- HTTP fetching: polite and safe.
    user_agent: str = _opt(
        "align-curation/0.1 (image-text dataset research; robots.txt honoured)",
        "User-Agent of every image and robots.txt request (input files over http(s) are "
        "read as align-curation's input reader)",
        "identify the crawler, so site owners can address it in robots.txt",
    )
    connect_timeout: float = _opt(5.0, "seconds to connect", "img2dataset uses 10 s overall")
    read_timeout: float = _opt(
        10.0, "seconds between bytes while reading", "img2dataset's 10 s timeout"
    )
    max_retries: int = _opt(
        2,
        "retries on timeouts, 429 and 5xx, with exponential backoff and jitter",
        "DataComp runs img2dataset with 2; img2dataset #361: 0->1 retry lifts success 56%->77%",
    )
    backoff_seconds: float = _opt(
        1.0, "first retry delay, doubled per retry", "datatrove's fetcher backs off from 2 s"
    )
    max_backoff_seconds: float = _opt(
        30.0, "longest wait, Retry-After included", "guard: a worker never sleeps longer"
    )
    max_redirects: int = _opt(
        5, "redirects followed per image", "browsers allow ~20; images need few"
    )
    fetch_deadline_seconds: float = _opt(
        60.0,
        "longest a whole image body may take to arrive",
        "guard: a slow-drip body cannot hold a fetch thread longer",
    )
    max_image_bytes: int = _opt(
        20_000_000, "bodies above this are refused while streaming", "guard: 20 MB"
    )
    per_host_connections: int = _opt(
        4, "simultaneous requests to one host per worker", "politeness (img2dataset #62)"
    )
    fetch_threads: int = _opt(
        32, "concurrent requests per worker", "I/O bound; img2dataset runs 32-128 threads"
    )
    measure_processes: int = _opt(
        -1,
        "child processes per worker that decode and hash the fetched images: 0 none (the "
        "fetch threads do it), -1 auto (one per core on the local in-memory runner, else 0, "
        "as Dataflow runs an SDK process per core)",
        "measured: the local runner's image stage uses one core without them "
        "(bench/bench_images.py)",
    )
    measure_timeout: float = _opt(
        120.0,
        "seconds an image may wait for its measuring process (from when it is queued) "
        "before the process is stopped and the image tried alone (image_decoder_crashed if "
        "it fails again)",
        "guard: a decoder that hangs on a hostile file must not hold the run",
    )
    image_transport: str = _opt(
        "auto",
        "how fetched image bytes reach the shard writer: spool (written once to files "
        "under OUTPUT/_spool-*, read back by the writer; only references cross the "
        "shuffles), shuffle (inside the records, through every shuffle), or auto (spool on "
        "the local runner and Flink, shuffle on Dataflow)",
        "measured on the local runner: peak memory 1.45 -> 0.83 GB on 2,000 images "
        "(BENCHMARKS.md, image path)",
    )
    respect_robots: bool = _opt(True, "honour robots.txt (cached per host)", "politeness")
    respect_opt_out: bool = _opt(
        True, "honour X-Robots-Tag noai / noimageai", "img2dataset's default (#245)"
    )
    allow_private_network: bool = _opt(
        False,
        "fetch from loopback and private addresses (tests, intranets); link-local stays refused",
        "SSRF guard: workers sit next to the cloud metadata server",
    )
    file_roots: tuple[str, ...] = _opt(
        (),
        "folders (local, file://, gs:// or any filesystem the runner reads) whose images URL "
        "tables may name by path or file:// URL, relative paths from the table's folder; "
        "a relative root is relative to the directory the run starts in "
        "(comma-separated; empty: none, such rows are unsupported_scheme or bad_url)",
        "a table from the web could otherwise read the workers' disks and buckets",
    )

    # --- Extraction caps: guards against hostile pages, each removal counted under a reason.
    max_images_per_page: int = _opt(
        5000,
        "<img> tags read per page; the rest are counted as page_image_cap",
        "guard: 30x the most <img> tags on one page of ../shared/data/warc (157, measured)",
    )
    max_alt_chars: int = _opt(
        1000,
        "longer alt attributes are counted as alt_text_oversized, not kept",
        "guard: 8x the longest alt-text in ../shared/data/warc (118 chars, measured)",
    )
    max_url_chars: int = _opt(
        2048,
        "longer image URLs are counted as url_oversized",
        "guard: the sitemaps.org URL limit; longest in ../shared/data/warc is 236 (measured)",
    )
    max_html_depth: int = _opt(
        2000,
        "pages nesting elements deeper are skipped as html_too_deep (parse time grows with "
        "the square of the depth)",
        "guard: measured 0.2 s at 10,000 deep, 25 s at 100,000; Chrome flattens past 512",
    )
    max_html_bytes: int = _opt(
        20_000_000,
        "HTML bodies above this (after content decoding) are skipped as body_too_large",
        "guard: the same 20 MB cap as the image fetcher",
    )

    # --- URL-table input.
    url_column: str = _opt("url", "URL column of table inputs", "img2dataset's default name")
    caption_column: str = _opt(
        "caption", "caption column of table inputs", "img2dataset's default name"
    )

    # --- Input expansion: Common Crawl manifests (warc.paths.gz, wat.paths.gz) in --input.
    paths_base: str = _opt(
        "",
        "where the relative paths of a manifest (warc.paths.gz, wat.paths.gz) are found: a "
        "folder or URL prefix such as https://data.commoncrawl.org/ or s3://commoncrawl/ "
        "(empty: the manifest's own location up to crawl-data/)",
        "Common Crawl's manifests list paths from the bucket root (crawl-data/CC-MAIN-...)",
    )
    max_input_files: int = _opt(
        0,
        "read only the first N files a manifest lists (0: all)",
        "a trial run over a few segments before the whole crawl",
    )
    sample_input_files: int = _opt(
        0,
        "read N files drawn at random (by seed) from a manifest, in the manifest's order (0: all)",
        "a sample spread over the crawl's segments; the same seed draws the same files",
    )
    seed: int = _opt(
        0,
        "seed of sample_input_files",
        "fixed: a rerun reads the same files",
    )

    # --- Output.
    shard_size: int = _opt(
        10_000, "records per output shard", "img2dataset's and DataComp's 10,000 per shard"
    )
    shard_max_bytes: int = _opt(
        0,
        "also cap a shard's image bytes (0: by count alone)",
        "off: 10,000 images of ~100 KB already make ~1 GB shards",
    )
    formats: tuple[str, ...] = _opt(
        ("parquet",),
        "shard formats: parquet, tfrecord, webdataset (comma-separated)",
        "Parquet for analysis; TFRecord for tf.data; WebDataset for open_clip",
    )

    def __post_init__(self) -> None:
        # Roots as paths are compared with them, settled where the config is made (the entry
        # point): a relative root is the user's directory's, not each worker's.
        roots = tuple(normalize_root(r) for r in self.file_roots if r.strip())
        object.__setattr__(self, "file_roots", roots)
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            base = _base_type(f.type)
            low = -1 if f.name in ("near_dup_distance", "nsfw_threads", "measure_processes") else 0
            if base is int and (not isinstance(value, int) or value < low):
                raise ConfigError(
                    f"config key '{f.name}': expected an integer >= {low}, got {value!r}"
                )
            if base is float and (not isinstance(value, int | float) or value < 0):
                raise ConfigError(f"config key '{f.name}': expected a number >= 0, got {value!r}")
        if self.measure_timeout <= 0:
            raise ConfigError("config key 'measure_timeout': must be above 0")
        if self.min_unigrams > self.max_unigrams:
            raise ConfigError(
                f"config key 'min_unigrams' ({self.min_unigrams}) exceeds "
                f"'max_unigrams' ({self.max_unigrams})"
            )
        unknown = [r for r in self.text_rules if r not in reasons.TEXT_REASONS]
        if unknown:
            raise ConfigError(
                f"config key 'text_rules': unknown rule {unknown[0]!r} "
                f"(known: {', '.join(reasons.TEXT_REASONS)})"
            )
        if self.vocab_ngrams not in (1, 2):
            raise ConfigError("config key 'vocab_ngrams': must be 1 or 2")
        if self.vocab_min_count < 1:
            raise ConfigError("config key 'vocab_min_count': must be at least 1")
        if self.language_detector not in LANGUAGE_DETECTORS:
            raise ConfigError(
                f"config key 'language_detector': unknown {self.language_detector!r} "
                f"(known: {', '.join(LANGUAGE_DETECTORS)})"
            )
        if self.images_from not in ("archive", "http", "auto"):
            raise ConfigError(
                f"config key 'images_from': unknown {self.images_from!r} (archive, http, auto)"
            )
        if self.eval_images and self.eval_index:
            raise ConfigError(
                "config keys 'eval_images' and 'eval_index': give one (add the images to the "
                "index with `curate eval-index`)"
            )
        if self.image_transport not in IMAGE_TRANSPORTS:
            raise ConfigError(
                f"config key 'image_transport': unknown {self.image_transport!r} "
                f"({', '.join(IMAGE_TRANSPORTS)})"
            )
        if self.encode_format not in ("original", "jpg", "png", "webp"):
            raise ConfigError(
                f"config key 'encode_format': unknown {self.encode_format!r} "
                "(original, jpg, png, webp)"
            )
        if self.resize_mode not in ("none", "keep_ratio", "center_crop"):
            raise ConfigError(
                f"config key 'resize_mode': unknown {self.resize_mode!r} "
                "(none, keep_ratio, center_crop)"
            )
        if not 0.0 <= self.nsfw_threshold <= 1.0:
            raise ConfigError("config key 'nsfw_threshold': must be between 0 and 1")
        if self.max_aspect_ratio < 1.0:
            raise ConfigError("config key 'max_aspect_ratio': must be at least 1")
        if not 1 <= self.jpeg_quality <= 100:
            raise ConfigError("config key 'jpeg_quality': must be between 1 and 100")
        if self.languages and not self.detect_language:
            raise ConfigError("config key 'languages' needs detect_language: true")
        bad = [f for f in self.formats if f not in SHARD_FORMATS]
        if bad or not self.formats:
            raise ConfigError(
                f"config key 'formats': unknown {bad[0] if bad else 'empty'!r} "
                f"(known: {', '.join(SHARD_FORMATS)})"
            )
        if self.max_input_files and self.sample_input_files:
            raise ConfigError(
                "config keys 'max_input_files' and 'sample_input_files': give one (the first "
                "N files, or N drawn by seed)"
            )
        if self.seed and not self.sample_input_files:
            raise ConfigError(
                "config key 'seed': it draws sample_input_files, which is not set (0)"
            )
        if self.shard_size < 1:
            raise ConfigError("config key 'shard_size': must be at least 1")

    # --- Construction and serialization.
    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], origin: str = "config") -> Self:
        """Build from a flat mapping (YAML or flags), rejecting unknown keys and bad types."""
        known = {f.name: f for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in values.items():
            name = str(key).replace("-", "_")
            if name not in known:
                raise ConfigError(
                    f"{origin}: unknown key '{key}' (known: {', '.join(sorted(known))})"
                )
            kwargs[name] = coerce(known[name], value, origin)
        return cls(**kwargs)

    @classmethod
    def load(
        cls,
        path: str | None,
        overrides: Mapping[str, Any] | None = None,
        base: Mapping[str, Any] | None = None,
    ) -> Self:
        """Defaults, then `base` (an earlier run's config), then the YAML file at `path`
        (if any), then `overrides`."""
        merged: dict[str, Any] = dict(base or {})
        if path is not None:
            try:
                with open(path, encoding="utf-8") as fh:
                    text = fh.read()
            except OSError as e:
                raise ConfigError(f"config file {path}: cannot read ({e.strerror})") from e
            merged.update(cls.yaml_mapping(text, f"config file {path}"))
        merged.update(overrides or {})
        return cls.from_mapping(merged)

    @classmethod
    def yaml_mapping(cls, text: str | bytes, origin: str) -> dict[str, Any]:
        """The keys of a YAML config document, validated on their own (errors name
        `origin`), not yet merged with defaults."""
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"{origin}: not valid YAML ({e})") from e
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(f"{origin}: expected a mapping of keys to values")
        cls.from_mapping(data, origin=origin)
        return data

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python form, lists for tuples, as written to config.yaml."""
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }

    def to_yaml(self) -> str:
        """The resolved configuration as YAML, loadable again with `load`."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)


def _base_type(tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _base_type(args[0])
    return origin or tp


def coerce(f: dataclasses.Field, value: Any, origin: str) -> Any:
    """Convert a YAML or command-line value to the field's type, or raise ConfigError."""
    base = _base_type(f.type)
    bad = ConfigError(f"{origin}: key '{f.name}' expects {base.__name__}, got {value!r}")
    if base is tuple:
        if isinstance(value, str):
            return tuple(v.strip() for v in value.split(",") if v.strip())
        if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise bad
    if base is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise bad
    if base is int:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value.replace("_", ""))
            except ValueError:
                raise bad from None
        raise bad
    if base is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        try:
            return float(value)
        except (TypeError, ValueError):
            raise bad from None
    if base is str:
        if isinstance(value, str):
            return value
        raise bad
    return value


def config_fields() -> list[dataclasses.Field]:
    """The fields of CurationConfig, for building CLI flags and docs."""
    return list(dataclasses.fields(CurationConfig))
