"""Streaming training data from the curation shards, in any of the project's three formats.

What: `iter_records` streams (key, image bytes, caption) out of a Parquet, WebDataset or
TFRecord shard (chosen by suffix) without loading the shard whole; `ShardDataset` splits
the shards across distributed ranks and DataLoader workers, shuffles through a buffer,
decodes, applies ALIGN's image transform (§4.1: resize to 346 x 346, then a random 289 x 289
crop and a random horizontal flip in training, the central crop in evaluation) and tokenizes;
`collate` batches the result.

Why: the images reach training through the same decode guard as the pipeline
(`filters.image.read_header` for pixel bombs, then `filters.image.decode`), and an image
that fails is not dropped in silence: it comes out as a `DecodeFailure`, which `collate`
returns beside the batch so that the training loop counts and reports it.
"""

from __future__ import annotations

import glob
import os
import random
import struct
import tarfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.distributed as dist
from PIL import Image
from tfrecord import example_pb2
from torch.utils.data import IterableDataset, get_worker_info

from curation.record import Rejection
from curation.shards import masked_crc32c
from filters.image import decode, read_header

# The pipeline's default `max_image_pixels` (Pillow's decompression-bomb warning limit).
MAX_PIXELS = 89_478_485
PARQUET, WEBDATASET, TFRECORD = "parquet", "webdataset", "tfrecord"
SUFFIXES = {".parquet": PARQUET, ".tar": WEBDATASET, ".tfrecord": TFRECORD, ".tfrecords": TFRECORD}
_TEXT_MEMBERS = {"txt", "json", "cls", "caption"}  # WebDataset members that are not the image

Tokenize = Callable[[str], dict[str, torch.Tensor]]
Record = tuple[str, bytes, str]


@dataclass(frozen=True, slots=True)
class DecodeFailure:
    """A sample whose image did not pass the decode guard; `reason` is from curation.reasons."""

    key: str
    reason: str
    detail: str = ""


def shard_format(path: str) -> str:
    """parquet, webdataset or tfrecord, by the file's suffix."""
    fmt = SUFFIXES.get(os.path.splitext(path)[1].lower())
    if fmt is None:
        raise ValueError(f"{path}: unknown shard suffix (known: {', '.join(SUFFIXES)})")
    return fmt


def expand_paths(paths: str | Iterable[str]) -> list[str]:
    """Shard files from paths, globs and folders (a folder's shards of known suffix, sorted);
    hidden files (writers' temporary names) are skipped, duplicates removed, order kept."""
    out: list[str] = []
    for p in [paths] if isinstance(paths, str | os.PathLike) else paths:
        p = os.fspath(p)
        if os.path.isdir(p):
            found = sorted(os.path.join(p, n) for n in os.listdir(p))
        elif glob.has_magic(p):
            found = sorted(glob.glob(p))
        else:
            found = [p]
        for f in found:
            name = os.path.basename(f)
            known = os.path.splitext(name)[1].lower() in SUFFIXES
            if not name.startswith(".") and known and f not in out:
                out.append(f)
    if not out:
        raise FileNotFoundError(f"no shards in {paths!r}")
    return out


def iter_records(path: str, batch_size: int = 256) -> Iterator[Record]:
    """Stream (key, image bytes, caption) out of one shard; a missing image gives b""."""
    fmt = shard_format(path)
    if fmt == PARQUET:
        yield from _iter_parquet(path, batch_size)
    elif fmt == WEBDATASET:
        yield from _iter_tar(path)
    else:
        yield from _iter_tfrecord(path)


def _iter_parquet(path: str, batch_size: int) -> Iterator[Record]:
    pf = pq.ParquetFile(path)
    names = set(pf.schema_arrow.names)
    key = "uid" if "uid" in names else "key"
    caption = "alt_text" if "alt_text" in names else "caption"
    for batch in pf.iter_batches(batch_size=batch_size, columns=[key, "image", caption]):
        cols = batch.to_pydict()
        for k, img, cap in zip(cols[key], cols["image"], cols[caption], strict=True):
            yield k, img or b"", cap or ""


def _iter_tar(path: str) -> Iterator[Record]:
    key: str | None = None
    image, caption = b"", ""
    with tarfile.open(path, mode="r|*") as tar:  # streaming: members in order, no seeking
        for member in tar:
            if not member.isfile():
                continue  # links and folders carry no sample data
            base = os.path.basename(member.name)
            stem, _, ext = base.partition(".")
            if stem != key:
                if key is not None:
                    yield key, image, caption
                key, image, caption = stem, b"", ""
            f = tar.extractfile(member)
            data = f.read() if f is not None else b""
            if ext.lower() == "txt":
                caption = data.decode("utf-8", "replace")
            elif ext.lower() not in _TEXT_MEMBERS:
                image = data
    if key is not None:
        yield key, image, caption


def _read_exact(f: Any, n: int, path: str, what: str) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise ValueError(f"{path}: truncated TFRecord ({what})")
    return data


def _iter_tfrecord(path: str) -> Iterator[Record]:
    with open(path, "rb") as f:
        while True:
            offset = f.tell()
            head = f.read(8)
            if not head:
                return
            if len(head) != 8:
                raise ValueError(f"{path}: truncated TFRecord (length at {offset})")
            (length_crc,) = struct.unpack("<I", _read_exact(f, 4, path, "length crc"))
            if masked_crc32c(head) != length_crc:
                raise ValueError(f"{path}: TFRecord length CRC mismatch at {offset}")
            (length,) = struct.unpack("<Q", head)
            data = _read_exact(f, length, path, "data")
            (data_crc,) = struct.unpack("<I", _read_exact(f, 4, path, "data crc"))
            if masked_crc32c(data) != data_crc:
                raise ValueError(f"{path}: TFRecord data CRC mismatch at {offset}")
            example = example_pb2.Example()
            example.ParseFromString(data)
            feature = example.features.feature
            key = _first_bytes(feature, "key").decode("utf-8", "replace")
            caption = _first_bytes(feature, "caption").decode("utf-8", "replace")
            yield key, _first_bytes(feature, "image/encoded"), caption


def _first_bytes(feature: Any, name: str) -> bytes:
    """The first value of a BytesList feature, b"" if absent (without inserting it)."""
    values = feature[name].bytes_list.value if name in feature else []
    return values[0] if values else b""


def image_transform(
    train: bool, resize: int = 346, crop: int = 289, rng: random.Random | None = None
) -> Callable[[Image.Image], torch.Tensor]:
    """ALIGN §4.1: resize to resize x resize (aspect not kept), then a random crop x crop and
    a random horizontal flip (train, drawn from `rng`, seeded 0 if not given) or the central
    crop (eval). Returns float32 C x H x W scaled to [-1, 1] (x / 127.5 - 1; no ImageNet
    mean/std), from PIL and numpy only."""
    if not 0 < crop <= resize:
        raise ValueError(f"crop {crop} must be in 1..resize ({resize})")
    rng = rng if rng is not None else random.Random(0)
    margin = resize - crop

    def transform(im: Image.Image) -> torch.Tensor:
        im = im.convert("RGB").resize((resize, resize), Image.Resampling.BICUBIC)
        arr = np.asarray(im, dtype=np.uint8)
        if train:
            y, x = rng.randint(0, margin), rng.randint(0, margin)
            arr = arr[y : y + crop, x : x + crop]
            if rng.random() < 0.5:
                arr = arr[:, ::-1]
        else:
            y = x = margin // 2
            arr = arr[y : y + crop, x : x + crop]
        chw = np.ascontiguousarray(arr.transpose(2, 0, 1), dtype=np.float32)
        return torch.from_numpy(chw) / 127.5 - 1.0

    return transform


def decode_image(data: bytes, min_side: int | None, max_pixels: int) -> Image.Image | Rejection:
    """The pipeline's decode guard: header pixel limit first, then a (draft) decode to RGB."""
    header = read_header(data, max_pixels)
    if isinstance(header, Rejection):
        return header
    return decode(data, min_side=min_side)


class ShardDataset(IterableDataset):
    """Samples from shards: {"key", "image", "caption", **tokenize(caption)} dicts, or a
    DecodeFailure for an image that fails the guard.

    Each epoch, the shard list (shuffled with `seed` and the epoch when `train`) is dealt
    round-robin to the (rank, worker) pairs, so each shard is read by exactly one of them;
    with fewer shards than pairs some read nothing. When `train`, a buffer of
    `shuffle_buffer` records mixes samples within a worker. The shuffle and the augmentation
    use a `random.Random` per (seed, epoch, rank, worker): runs are reproducible for the same
    world size and worker count. `epochs=None` repeats forever; with epochs=1 and a new
    DataLoader pass per epoch, call `set_epoch` first (not seen by persistent workers).
    """

    def __init__(
        self,
        paths: str | Sequence[str],
        tokenize: Tokenize | None = None,
        train: bool = True,
        resize: int = 346,
        crop: int = 289,
        shuffle_buffer: int = 1000,
        seed: int = 0,
        epochs: int | None = 1,
        max_pixels: int = MAX_PIXELS,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        super().__init__()
        self.shards = expand_paths(paths)
        self.tokenize, self.train, self.resize, self.crop = tokenize, train, resize, crop
        self.shuffle_buffer, self.seed, self.epochs = shuffle_buffer, seed, epochs
        self.max_pixels, self.rank, self.world_size = max_pixels, rank, world_size
        self.start_epoch = 0
        image_transform(train, resize, crop)  # validate the sizes now, not in a worker

    def set_epoch(self, epoch: int) -> None:
        """The epoch the next iteration starts at (it seeds the shard order and shuffle)."""
        self.start_epoch = epoch

    def _slot(self) -> tuple[int, int, int, int]:
        rank, world = self.rank, self.world_size
        if rank is None or world is None:
            initialized = dist.is_available() and dist.is_initialized()
            rank = dist.get_rank() if initialized else 0
            world = dist.get_world_size() if initialized else 1
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        return rank, world, worker, workers

    def shards_for(self, epoch: int, rank: int, world: int, worker: int, workers: int) -> list[str]:
        """The shards that (rank, worker) reads in `epoch`."""
        order = list(self.shards)
        if self.train:
            random.Random(f"shards:{self.seed}:{epoch}").shuffle(order)
        return order[rank * workers + worker :: world * workers]

    def __iter__(self) -> Iterator[dict[str, Any] | DecodeFailure]:
        rank, world, worker, workers = self._slot()
        epoch = self.start_epoch
        while self.epochs is None or epoch < self.start_epoch + self.epochs:
            rng = random.Random(f"samples:{self.seed}:{epoch}:{rank}:{worker}")
            transform = image_transform(self.train, self.resize, self.crop, rng)
            records = (
                r
                for shard in self.shards_for(epoch, rank, world, worker, workers)
                for r in iter_records(shard)
            )
            if self.train and self.shuffle_buffer > 1:
                records = shuffled(records, self.shuffle_buffer, rng)
            for key, data, caption in records:
                yield self._sample(key, data, caption, transform)
            epoch += 1

    def _sample(
        self, key: str, data: bytes, caption: str, transform: Callable[[Image.Image], torch.Tensor]
    ) -> dict[str, Any] | DecodeFailure:
        im = decode_image(data, self.resize, self.max_pixels)
        if isinstance(im, Rejection):
            return DecodeFailure(key, im.reason, im.detail)
        item: dict[str, Any] = {"key": key, "image": transform(im), "caption": caption}
        if self.tokenize is not None:
            item.update(self.tokenize(caption))
        return item


def shuffled(records: Iterable[Record], size: int, rng: random.Random) -> Iterator[Record]:
    """Reservoir-style shuffle buffer: once `size` records are held, each new one takes the
    place of a random held one, which is yielded; the rest come out shuffled at the end."""
    buf: list[Record] = []
    for r in records:
        if len(buf) < size:
            buf.append(r)
            continue
        i = rng.randrange(size)
        buf[i], r = r, buf[i]
        yield r
    rng.shuffle(buf)
    yield from buf


def collate(items: Sequence[dict[str, Any] | DecodeFailure]) -> dict[str, Any]:
    """{"decode_failures": [DecodeFailure, ...], "batch": None or the good samples, with
    tensors stacked (image: N x C x H x W, token tensors: N x ...) and the rest as lists}."""
    failures = [i for i in items if isinstance(i, DecodeFailure)]
    good = [i for i in items if not isinstance(i, DecodeFailure)]
    batch: dict[str, Any] | None = None
    if good:
        batch = {}
        for name in good[0]:
            values = [g[name] for g in good]
            is_tensor = isinstance(values[0], torch.Tensor)
            batch[name] = torch.stack(values) if is_tensor else values
    return {"decode_failures": failures, "batch": batch}
