"""Read curated shards with tf.data and open_clip, the two trainers too heavy for the tests.

Serves every image of ../shared/data/images from 127.0.0.1, curates them with `curate run`
into all three formats (and once more with --encode-format jpg), then, each in a throwaway
virtual environment made here and reused on later runs:

- tf.data (tensorflow-cpu): parse every TFRecord example with a strict spec that lists every
  feature (text_lang included), `tf.io.decode_image(channels=3)`, batch; count the images.
- open_clip (torch==2.14.1, torchvision==0.29.1, open_clip_torch): `get_wds_dataset` on the
  tars with no --train-num-samples (sizes.json sizes it), every sample through its eval
  pipeline (its filter, decode, rename, preprocess), then one training step of an untrained
  RN50 on a training batch.

Prints the counts against the run's kept total; exits 1 if any reader lost a sample.

    python scripts/check_readers.py [--work /tmp/check_readers]
"""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import subprocess
import sys
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "images"
ENVS = {
    "tf": ["tensorflow-cpu"],
    "open_clip": [
        "torch==2.14.1",
        "torchvision==0.29.1",
        "open_clip_torch",
        # open_clip's training loader needs a webdataset of its own range (a newer one renames
        # the sample fields its group_by_keys_nothrow reads); pandas for its data module.
        "webdataset>=0.2.5,<=0.2.86",
        "pandas",
    ],
}

TF_CHECK = r"""
import glob, sys
import tensorflow as tf
spec = {
    "image/encoded": tf.io.FixedLenFeature([], tf.string),
    "image/format": tf.io.FixedLenFeature([], tf.string),
    "image/original_format": tf.io.FixedLenFeature([], tf.string),
    "image/width": tf.io.FixedLenFeature([], tf.int64),
    "image/height": tf.io.FixedLenFeature([], tf.int64),
    "caption": tf.io.FixedLenFeature([], tf.string),
    "key": tf.io.FixedLenFeature([], tf.string),
    "url": tf.io.FixedLenFeature([], tf.string),
    "text_lang": tf.io.FixedLenFeature([], tf.string),
    "nsfw_score": tf.io.FixedLenFeature([], tf.float32),
}
def parse(record):
    ex = tf.io.parse_single_example(record, spec)
    image = tf.io.decode_image(ex["image/encoded"], channels=3, expand_animations=False)
    return tf.image.resize(image, (64, 64)), ex["caption"]
files = sorted(glob.glob(sys.argv[1] + "/*.tfrecord"))
ds = tf.data.TFRecordDataset(files).map(parse).batch(8)
print(sum(int(images.shape[0]) for images, _ in ds))
"""

OPEN_CLIP_CHECK = r"""
import glob, os, sys
import torch, open_clip
from open_clip_train.data import get_wds_dataset
from open_clip_train.params import parse_args
folder = sys.argv[1]
tars = sorted(glob.glob(folder + "/*.tar"))
first, last = (os.path.basename(t)[:-4] for t in (tars[0], tars[-1]))
pattern = os.path.join(folder, "{%s..%s}.tar" % (first, last))
model, preprocess_train, preprocess_val = open_clip.create_model_and_transforms(
    "RN50", pretrained=None
)
tokenizer = open_clip.get_tokenizer("RN50")
args = parse_args(["--train-data", pattern, "--val-data", pattern, "--dataset-type", "webdataset",
                   "--batch-size", "4", "--workers", "1", "--model", "RN50"])
args.world_size, args.rank = 1, 0
seen = 0
for images, texts in get_wds_dataset(args, preprocess_val, False, tokenizer=tokenizer).dataloader:
    seen += images.shape[0]
train = get_wds_dataset(args, preprocess_train, True, tokenizer=tokenizer)  # no --train-num-samples
images, texts = next(iter(train.dataloader))
loss_fn = open_clip.ClipLoss()
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
image_features, text_features, scale = model(images, texts)[:3]
loss = loss_fn(image_features, text_features, scale)
loss.backward(); optimizer.step()
print(seen, train.dataloader.num_samples, float(loss))
"""


def serve(folder: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    """A static server of `folder` on 127.0.0.1 (robots.txt is a 404: no rules)."""
    handler = functools.partial(_Quiet, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


def curate(work: Path, base: str) -> dict[str, Path]:
    files = sorted(p for p in DATA.rglob("*") if p.is_file() and p.suffix not in (".md", ".csv"))
    table = work / "urls.tsv"
    rows = [
        f"{base}/{p.relative_to(DATA).as_posix()}\ta test picture number {i} in the collection\n"
        for i, p in enumerate(files)
    ]
    table.write_text("url\tcaption\n" + "".join(rows))
    curate_bin = str(Path(sys.executable).with_name("curate"))
    common = [curate_bin, "run", "--input", str(table), "--images-from", "http", "--no-nsfw"]
    common += ["--allow-private-network", "--max-retries", "0", "--overwrite"]
    out = {"default": work / "out", "jpg": work / "out-jpg"}
    formats = "parquet,tfrecord,webdataset"
    subprocess.run([*common, "--output", str(out["default"]), "--formats", formats], check=True)
    jpg = ["--output", str(out["jpg"]), "--formats", "webdataset", "--encode-format", "jpg"]
    subprocess.run([*common, *jpg], check=True)
    return out


def venv(work: Path, name: str) -> Path:
    """A virtual environment with ENVS[name] installed (made once, topped up when the list
    changes)."""
    folder = work / f"venv-{name}"
    python = folder / "bin" / "python"
    done, wanted = folder / ".done", " ".join(ENVS[name])
    if not done.exists() or done.read_text() != wanted:
        if not python.exists():
            subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True)
        pip = [str(python), "-m", "pip", "install", "--quiet", *ENVS[name]]
        subprocess.run(pip, check=True)
        done.write_text(wanted)
    return python


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/check_readers"))
    args = ap.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    server, base = serve(DATA)
    try:
        out = curate(args.work, base)
    finally:
        server.shutdown()
    kept = json.loads((out["default"] / "stats.json").read_text())["totals"]["kept"]
    tf_python, oc_python = venv(args.work, "tf"), venv(args.work, "open_clip")
    tf_count = subprocess.run(
        [str(tf_python), "-c", TF_CHECK, str(out["default"] / "tfrecord")],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()[-1]
    results = {}
    for name in ("default", "jpg"):
        printed = subprocess.run(
            [str(oc_python), "-c", OPEN_CLIP_CHECK, str(out[name] / "webdataset")],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split()
        results[name] = printed[-3:]
    lines = [
        f"kept images: {kept}",
        f"tf.data (strict spec, decode_image channels=3): {tf_count} of {kept} decoded",
    ]
    for name, (seen, sized, loss) in results.items():
        label = "--encode-format jpg" if name == "jpg" else "default encoding"
        lines.append(
            f"open_clip get_wds_dataset, {label}: {seen} of {kept} samples reached a batch; "
            f"sized {sized} from sizes.json (no --train-num-samples); "
            f"one RN50 step, loss {float(loss):.3f}"
        )
    print("\n".join(lines))
    lost = int(tf_count) != kept or any(int(r[0]) != kept for r in results.values())
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
