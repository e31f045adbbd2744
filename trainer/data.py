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
import hashlib
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


def iter_records(path: str, batch_size: int = 64, start: int = 0) -> Iterator[Record]:
    """Stream (key, image bytes, caption) out of one shard from its `start`-th record on; a
    missing image gives b"". The records before `start` are skipped without reading their
    images where the format allows (Parquet row groups, TFRecord lengths, tar headers)."""
    fmt = shard_format(path)
    if fmt == PARQUET:
        yield from _iter_parquet(path, batch_size, start)
    elif fmt == WEBDATASET:
        yield from _iter_tar(path, start)
    else:
        yield from _iter_tfrecord(path, start)


def record_count(path: str) -> int:
    """Records in one shard, from the Parquet footer or by reading only the TFRecord lengths
    or the tar headers."""
    fmt = shard_format(path)
    if fmt == PARQUET:
        return pq.ParquetFile(path).metadata.num_rows
    if fmt == WEBDATASET:
        return sum(1 for _ in _tar_samples(path, skip_all=True))
    return sum(1 for _ in _tfrecord_frames(path, skip_all=True))


def _iter_parquet(path: str, batch_size: int, start: int) -> Iterator[Record]:
    pf = pq.ParquetFile(path)
    names = set(pf.schema_arrow.names)
    key = "uid" if "uid" in names else "key"
    caption = "alt_text" if "alt_text" in names else "caption"
    first_group, first = 0, 0  # the group that holds row `start`, and its first row
    while first_group < pf.metadata.num_row_groups:
        rows = pf.metadata.row_group(first_group).num_rows
        if first + rows > start:
            break
        first, first_group = first + rows, first_group + 1  # wholly before: never read
    groups = list(range(first_group, pf.metadata.num_row_groups))
    skip = start - first
    if not groups:
        return
    batches = pf.iter_batches(
        batch_size=batch_size, row_groups=groups, columns=[key, "image", caption]
    )
    for batch in batches:
        if skip >= batch.num_rows:
            skip -= batch.num_rows
            continue
        cols = batch.slice(skip).to_pydict()
        skip = 0
        for k, img, cap in zip(cols[key], cols["image"], cols[caption], strict=True):
            yield k, img or b"", cap or ""


def _iter_tar(path: str, start: int) -> Iterator[Record]:
    for index, (key, members) in enumerate(_tar_samples(path, skip_below=start)):
        if index < start:
            continue
        image, caption = b"", ""
        for ext, data in members:
            if ext == "txt":
                caption = data.decode("utf-8", "replace")
            elif ext not in _TEXT_MEMBERS:
                image = data
        yield key, image, caption


def _tar_samples(
    path: str, skip_below: int = 0, skip_all: bool = False
) -> Iterator[tuple[str, list[tuple[str, bytes]]]]:
    """(key, [(extension, data), ...]) per sample, members grouped by name stem; the data of
    samples before `skip_below` (or of all, with `skip_all`) is not read: []."""
    # Streaming reads members in order without seeking; skipping seeks over the data instead.
    mode = "r|*" if skip_below == 0 and not skip_all else "r:*"
    key: str | None = None
    members: list[tuple[str, bytes]] = []
    index = -1
    with tarfile.open(path, mode=mode) as tar:
        for member in tar:
            if not member.isfile():
                continue  # links and folders carry no sample data
            stem, _, ext = os.path.basename(member.name).partition(".")
            if stem != key:
                if key is not None:
                    yield key, members
                key, members, index = stem, [], index + 1
            if skip_all or index < skip_below:
                continue
            f = tar.extractfile(member)
            members.append((ext.lower(), f.read() if f is not None else b""))
    if key is not None:
        yield key, members


def iter_captions(path: str) -> Iterator[str]:
    """The captions of one shard, reading as little else as the format allows: the caption
    column alone from Parquet, only the .txt members of a tar (the images are seeked over),
    TFRecord examples whole (the format has no columns)."""
    fmt = shard_format(path)
    if fmt == PARQUET:
        pf = pq.ParquetFile(path)
        names = set(pf.schema_arrow.names)
        caption = "alt_text" if "alt_text" in names else "caption"
        for batch in pf.iter_batches(batch_size=8192, columns=[caption]):
            yield from (c or "" for c in batch.column(0).to_pylist())
    elif fmt == WEBDATASET:
        with tarfile.open(path, mode="r:*") as tar:
            for member in tar:
                if member.isfile() and member.name.lower().endswith(".txt"):
                    f = tar.extractfile(member)
                    yield f.read().decode("utf-8", "replace") if f is not None else ""
    else:
        yield from (caption for _, _, caption in _iter_tfrecord(path, 0))


def _read_exact(f: Any, n: int, path: str, what: str) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise ValueError(f"{path}: truncated TFRecord ({what})")
    return data


def _tfrecord_frames(
    path: str, skip_below: int = 0, skip_all: bool = False
) -> Iterator[bytes | None]:
    """Each record's checked data, or None for one before `skip_below` (or all, with
    `skip_all`), whose data is seeked over unread (its length CRC is still checked)."""
    with open(path, "rb") as f:
        index = 0
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
            if skip_all or index < skip_below:
                f.seek(length + 4, os.SEEK_CUR)
                index += 1
                yield None
                continue
            data = _read_exact(f, length, path, "data")
            (data_crc,) = struct.unpack("<I", _read_exact(f, 4, path, "data crc"))
            if masked_crc32c(data) != data_crc:
                raise ValueError(f"{path}: TFRecord data CRC mismatch at {offset}")
            index += 1
            yield data


def _iter_tfrecord(path: str, start: int) -> Iterator[Record]:
    for data in _tfrecord_frames(path, skip_below=start):
        if data is None:
            continue
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
    train: bool,
    resize: int = 346,
    crop: int = 289,
    rng: random.Random | None = None,
    uint8: bool = False,
) -> Callable[[Image.Image], torch.Tensor]:
    """ALIGN §4.1: resize to resize x resize (aspect not kept), then a random crop x crop and
    a random horizontal flip (train, drawn from `rng`, seeded 0 if not given) or the central
    crop (eval). Returns C x H x W: float32 scaled to [-1, 1] (x / 127.5 - 1; no ImageNet
    mean/std), or with `uint8` the pixels themselves, a quarter of the bytes to move between
    processes and to the device, where `normalize_pixels` scales them. PIL and numpy only."""
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
        chw = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))
        return chw if uint8 else normalize_pixels(chw)

    return transform


def normalize_pixels(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> float32 in [-1, 1] (x / 127.5 - 1), on whatever device they are."""
    return pixels.float() / 127.5 - 1.0


def decode_image(data: bytes, min_side: int | None, max_pixels: int) -> Image.Image | Rejection:
    """The pipeline's decode guard: header pixel limit first, then a (draft) decode to RGB."""
    header = read_header(data, max_pixels)
    if isinstance(header, Rejection):
        return header
    return decode(data, min_side=min_side)


@dataclass(frozen=True, slots=True)
class Position:
    """Where one (rank, worker) reader of the training stream stands: the first `emitted`
    records (samples and decode failures) of `epoch` are consumed."""

    epoch: int
    emitted: int


class RecordOrder:
    """The order in which one (rank, worker) visits its records in one epoch, as (shard,
    offset) pairs: `interleave` shards open at once, one record from each in turn (a shard
    that ends gives its turn to the next unopened one), through a shuffle buffer of `buffer`
    records (none below 2). The order depends only on the shard lengths and `rng`, so a
    resumed run replays it without reading a byte; `on_pull` and `on_done` are told when a
    record is taken from a shard and when a shard is finished, for the reader of the data.
    """

    def __init__(
        self,
        length: Callable[[int], int],
        shards: int,
        interleave: int,
        buffer: int,
        rng: random.Random,
    ) -> None:
        self.length, self.shards, self.size, self.rng = length, shards, buffer, rng
        opened = min(interleave, shards)
        self.slots = [(s, 0, length(s)) for s in range(opened)]  # (shard, next offset, length)
        self.next_shard, self.turn = opened, 0
        self.buffer: list[tuple[int, int]] = []
        self.draining = False
        self.on_pull: Callable[[int, int], None] | None = None
        self.on_done: Callable[[int], None] | None = None

    def _pull(self) -> tuple[int, int] | None:
        while self.slots:
            self.turn %= len(self.slots)
            shard, offset, length = self.slots[self.turn]
            if offset < length:
                self.slots[self.turn] = (shard, offset + 1, length)
                self.turn += 1
                if self.on_pull is not None:
                    self.on_pull(shard, offset)
                return shard, offset
            if self.on_done is not None:
                self.on_done(shard)
            if self.next_shard < self.shards:
                self.slots[self.turn] = (self.next_shard, 0, self.length(self.next_shard))
                self.next_shard += 1
            else:
                del self.slots[self.turn]
        return None

    def next(self) -> tuple[int, int] | None:
        """The next (shard, offset) to emit, None at the end of the epoch."""
        if self.size < 2:
            return self._pull()
        while not self.draining:
            ref = self._pull()
            if ref is None:
                # The end: what the buffer holds comes out in a random order.
                self.draining = True
                self.rng.shuffle(self.buffer)
                self.buffer.reverse()  # popped from the end: the shuffled order
                break
            if len(self.buffer) < self.size:
                self.buffer.append(ref)
                continue
            i = self.rng.randrange(self.size)
            self.buffer[i], ref = ref, self.buffer[i]
            return ref
        return self.buffer.pop() if self.buffer else None


class ShardDataset(IterableDataset):
    """Samples from shards: {"key", "image", "caption", **tokenize(caption), "decode_failures",
    "position"} dicts. An image that fails the decode guard is skipped here, so batches stay
    full (under DDP every rank must contribute the same number of rows), and is not lost: its
    `DecodeFailure` rides in the next sample's "decode_failures" list (at the very end of a
    finite stream, the ones left over come out on their own). "position" is (worker, epoch,
    records emitted in that epoch), which `collate` hands to the training loop so that a
    checkpoint can say where each reader stands.

    Each epoch, the shard list (shuffled with `seed` and the epoch when `train`) is dealt
    round-robin to the (rank, worker) pairs, so each shard is read by exactly one of them;
    with fewer shards than pairs some read nothing. When `train`, a worker reads
    `shards_per_worker` shards at once, interleaved, through a buffer of `shuffle_buffer`
    records (`RecordOrder`); the shuffle draws from a `random.Random` per (seed, epoch, rank,
    worker) and each sample's augmentation from its own, seeded by its place in the stream:
    runs are reproducible for the same world size and worker count, and `resume` restarts
    them exactly. `epochs=None` repeats forever; with epochs=1 and a new DataLoader pass per
    epoch, call `set_epoch` first (not seen by persistent workers). Images come out as uint8
    (`normalize_pixels` on the device), or float32 in [-1, 1] with `uint8=False`.
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
        shards_per_worker: int = 1,
        uint8: bool = True,
    ) -> None:
        super().__init__()
        self.shards = expand_paths(paths)
        self.tokenize, self.train, self.resize, self.crop = tokenize, train, resize, crop
        self.shuffle_buffer, self.seed, self.epochs = shuffle_buffer, seed, epochs
        self.max_pixels, self.rank, self.world_size = max_pixels, rank, world_size
        self.shards_per_worker, self.uint8 = shards_per_worker, uint8
        self.start_epoch = 0
        self.positions: dict[int, Position] = {}
        self.phase = 0
        image_transform(train, resize, crop)  # validate the sizes now, not in a worker

    def set_epoch(self, epoch: int) -> None:
        """The epoch the next iteration starts at (it seeds the shard order and shuffle)."""
        self.start_epoch = epoch

    def resume(self, positions: dict[int, Position], phase: int = 0) -> None:
        """Start each worker where `positions` says it stood, skipping the records it had
        emitted without reading or decoding them (the few the shuffle buffer held are read
        again, not decoded); `phase` is the worker whose batch the DataLoader was to fetch
        next (it fetches from its workers in turn, starting at 0, so worker ids shift by it)."""
        self.positions, self.phase = dict(positions), phase

    def _slot(self) -> tuple[int, int, int, int]:
        rank, world = self.rank, self.world_size
        if rank is None or world is None:
            initialized = dist.is_available() and dist.is_initialized()
            rank = dist.get_rank() if initialized else 0
            world = dist.get_world_size() if initialized else 1
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        return rank, world, (worker + self.phase) % workers, workers

    def shards_for(self, epoch: int, rank: int, world: int, worker: int, workers: int) -> list[str]:
        """The shards that (rank, worker) reads in `epoch`."""
        order = list(self.shards)
        if self.train:
            random.Random(f"shards:{self.seed}:{epoch}").shuffle(order)
        return order[rank * workers + worker :: world * workers]

    def __iter__(self) -> Iterator[dict[str, Any] | DecodeFailure]:
        rank, world, worker, workers = self._slot()
        start = self.positions.get(worker, Position(self.start_epoch, 0))
        epoch, skip = start.epoch, start.emitted
        pending: list[DecodeFailure] = []
        lengths: dict[str, int] = {}
        first = start.epoch
        while self.epochs is None or epoch < first + self.epochs:
            good = emitted = 0
            for item in self._epoch(epoch, rank, world, worker, workers, skip, lengths):
                emitted += 1
                if isinstance(item, DecodeFailure):
                    pending.append(item)
                    continue
                good += 1
                item["decode_failures"], pending = pending, []
                yield item
            if self.epochs is None and not good:
                if emitted:
                    # An endless stream that never yields would hang the training loop.
                    raise ValueError(f"worker {worker} of rank {rank}: no image decodes")
                return  # this reader has no records: it ends (the DataLoader goes on)
            epoch, skip = epoch + 1, 0
        yield from pending

    def _epoch(
        self,
        epoch: int,
        rank: int,
        world: int,
        worker: int,
        workers: int,
        skip: int,
        lengths: dict[str, int],
    ) -> Iterator[dict[str, Any] | DecodeFailure]:
        """One epoch of this reader's records from the `skip`-th on, decoded."""
        shards = self.shards_for(epoch, rank, world, worker, workers)

        def length(s: int) -> int:
            if shards[s] not in lengths:
                lengths[shards[s]] = record_count(shards[s])
            return lengths[shards[s]]

        rng = random.Random(f"samples:{self.seed}:{epoch}:{rank}:{worker}")
        interleave = self.shards_per_worker if self.train else 1
        order = RecordOrder(
            length, len(shards), interleave, self.shuffle_buffer if self.train else 0, rng
        )
        for _ in range(skip):  # the consumed records: replayed, not read
            order.next()
        held = _refill(shards, order.buffer)  # what the buffer held: read again
        readers: dict[int, Iterator[Record]] = {}

        def pull(s: int, offset: int) -> None:
            if s not in readers:
                readers[s] = iter_records(shards[s], start=offset)
            record = next(readers[s], None)
            if record is None:
                raise ValueError(f"{shards[s]}: fewer records than counted ({offset})")
            held[(s, offset)] = record

        def done(s: int) -> None:
            reader = readers.pop(s, None)
            if reader is not None:
                reader.close()  # type: ignore[attr-defined]

        order.on_pull, order.on_done = pull, done
        transform = image_transform(self.train, self.resize, self.crop, uint8=self.uint8)
        emitted = skip
        while (ref := order.next()) is not None:
            emitted += 1
            key, data, caption = held.pop(ref)
            if self.train:  # this sample's own draws: the same wherever a run resumed
                rng = random.Random(f"augment:{self.seed}:{epoch}:{rank}:{worker}:{emitted}")
                transform = image_transform(True, self.resize, self.crop, rng, self.uint8)
            sample = self._sample(key, data, caption, transform)
            if isinstance(sample, dict):
                sample["position"] = (worker, epoch, emitted)
            yield sample

    def _sample(
        self, key: str, data: bytes, caption: str, transform: Callable[[Image.Image], torch.Tensor]
    ) -> dict[str, Any] | DecodeFailure:
        im = decode_image(data, self.resize, self.max_pixels)
        if isinstance(im, Rejection):
            return DecodeFailure(key, im.reason, im.detail)
        item: dict[str, Any] = {"key": key, "image": transform(im), "caption": caption}
        if not self.train:
            # Which rows show the same image: a retrieval set written one row per caption
            # (COCO, Flickr30K: 5 each) must score each image once, not five times.
            item["image_id"] = hashlib.blake2b(data, digest_size=16).hexdigest()
        if self.tokenize is not None:
            item.update(self.tokenize(caption))
        return item


def _refill(shards: Sequence[str], refs: Iterable[tuple[int, int]]) -> dict:
    """The records at `refs` ((shard, offset) pairs), each shard read from its first wanted
    offset to its last (a resumed shuffle buffer: recent records of the open shards)."""
    wanted: dict[int, set[int]] = {}
    for s, offset in refs:
        wanted.setdefault(s, set()).add(offset)
    out: dict[tuple[int, int], Record] = {}
    for s, offsets in wanted.items():
        lo, hi = min(offsets), max(offsets)
        for offset, record in enumerate(iter_records(shards[s], start=lo), lo):
            if offset in offsets:
                out[(s, offset)] = record
            if offset >= hi:
                break
    return out


def collate(items: Sequence[dict[str, Any] | DecodeFailure]) -> dict[str, Any]:
    """{"decode_failures": [DecodeFailure, ...], "position": the last sample's (worker,
    epoch, emitted) or None, "batch": None or the samples, with tensors stacked (image:
    N x C x H x W, token tensors: N x ...) and the rest as lists}."""
    failures = [i for i in items if isinstance(i, DecodeFailure)]
    good = [i for i in items if not isinstance(i, DecodeFailure)]
    batch: dict[str, Any] | None = None
    position = None
    if good:
        batch = {}
        for item in good:
            failures += item.get("decode_failures", [])
        position = good[-1].get("position")
        for name in good[0]:
            if name in ("decode_failures", "position"):
                continue
            values = [g[name] for g in good]
            is_tensor = isinstance(values[0], torch.Tensor)
            batch[name] = torch.stack(values) if is_tensor else values
    return {"decode_failures": failures, "position": position, "batch": batch}
