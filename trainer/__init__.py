"""The companion trainer: ALIGN's dual encoder (EfficientNet + BERT, normalized softmax loss)
trained on the shards that `curate run` writes. An optional extra: `pip install .[train]`."""
