"""The text tokenizer: a WordPiece vocabulary trained on the curated alt-texts (ALIGN §4.1:
"a 100k wordpiece vocabulary generated from our training data"), with Hugging Face tokenizers."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from tokenizers.processors import TemplateProcessing

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def train_wordpiece(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """A BERT-style uncased WordPiece tokenizer trained on `texts`."""
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=SPECIAL)
    tok.train_from_iterator(texts, trainer=trainer)
    # The trainer numbers tokens in hash-map order: renumber them in a canonical order. (Which
    # tokens it learns can still differ between trainings when merges tie in frequency, so a
    # run saves its tokenizer and a resumed run reuses it.)
    learned = tok.get_vocab()
    order = SPECIAL + sorted(t for t in learned if t not in SPECIAL)
    tok.model = models.WordPiece({t: i for i, t in enumerate(order)}, unk_token="[UNK]")
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    return tok


class TextEncoder:
    """Callable text -> {'input_ids', 'attention_mask'} tensors of a fixed length."""

    def __init__(self, tokenizer: Tokenizer, max_len: int) -> None:
        self.tokenizer = tokenizer
        self.max_len = max_len
        self.pad_id = tokenizer.token_to_id("[PAD]")
        tokenizer.enable_truncation(max_len)
        tokenizer.enable_padding(length=max_len, pad_id=self.pad_id, pad_token="[PAD]")

    @classmethod
    def load(cls, path: Path, max_len: int) -> TextEncoder:
        """A tokenizer saved by `save`."""
        return cls(Tokenizer.from_file(str(path)), max_len)

    def save(self, path: Path) -> None:
        """The tokenizer as one JSON file."""
        self.tokenizer.save(str(path))

    @property
    def vocab_size(self) -> int:
        """Tokens in the vocabulary, special tokens included."""
        return self.tokenizer.get_vocab_size()

    def __call__(self, text: str) -> dict[str, torch.Tensor]:
        enc = self.tokenizer.encode(text)
        return {
            "input_ids": torch.tensor(enc.ids, dtype=torch.long),
            "attention_mask": torch.tensor(enc.attention_mask, dtype=torch.long),
        }

    def batch(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Several texts at once."""
        encs = self.tokenizer.encode_batch(texts)
        return {
            "input_ids": torch.tensor([e.ids for e in encs], dtype=torch.long),
            "attention_mask": torch.tensor([e.attention_mask for e in encs], dtype=torch.long),
        }
