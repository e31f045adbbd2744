"""Language of an alt-text: a detector behind one function, and the optional filter.

langdetect is seeded, so a text gets the same answer on every run and worker. The page's
declared language is a prior: alt-texts are short, and the page says what it is written in.
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
import threading
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import pycld2
from langdetect.detector import Detector
from langdetect.detector_factory import PROFILES_DIRECTORY, DetectorFactory
from langdetect.language import Language

from curation import reasons
from curation.config import CurationConfig
from curation.record import Rejection

_STAGE = reasons.STAGE_TEXT
# Weight of the page's declared language in langdetect's prior; the rest is spread evenly.
HINT_PRIOR = 0.5


_largest = np.maximum.reduce  # ndarray.max() without its Python wrapper

# langdetect's constants, read from its Detector so that a change there shows up here.
_ALPHA, _ALPHA_WIDTH, _BASE_FREQ = Detector.ALPHA_DEFAULT, Detector.ALPHA_WIDTH, Detector.BASE_FREQ
_CONV, _LIMIT = Detector.CONV_THRESHOLD, Detector.ITERATION_LIMIT
_BLOCK = 5  # langdetect normalizes, and tests for convergence, after every 5th update
_BUFFER = 256  # sampled n-grams prepared per text at a time; a trial mostly needs ~70
_WINDOW = 640  # stream words read to find them: each is accepted with p > 1/2
_TWOPI = 2.0 * math.pi  # random.py's TWOPI


class _Stream:
    """The 32-bit words langdetect's generator gives after `seed(s)`, read from any position.

    langdetect reseeds its generator for every text, so every text draws from this one
    stream; texts differ only in where each trial starts (where the last one converged).
    numpy's MT19937 is the same Mersenne Twister as CPython's, started from its state.
    """

    def __init__(self, seed: int) -> None:
        state = random.Random(seed).getstate()[1]
        key = np.array(state[:624], dtype=np.uint32)
        self._gen = np.random.MT19937()
        self._gen.state = {"bit_generator": "MT19937", "state": {"key": key, "pos": state[624]}}
        self.words = np.empty(0, dtype=np.uint32)
        self._lock = threading.Lock()  # words must be drawn in order, by one thread at a time

    def upto(self, end: int) -> np.ndarray:
        """The stream, at least `end` words of it."""
        words = self.words
        if len(words) < end:
            with self._lock:
                words = self.words
                if len(words) < end:
                    more = self._gen.random_raw(max(end - len(words), 1 << 15))
                    words = self.words = np.concatenate([words, more.astype(np.uint32)])
        return words

    def gauss_pair(self, at: int) -> tuple[float, float]:
        """random.gauss(0, 1) and the value it caches, from the 4 words at `at`: two
        random() doubles (53 bits from 2 words each), then CPython's formula."""
        a, b, c, d = (int(x) for x in self.upto(at + 4)[at : at + 4])
        u1 = ((a >> 5) * 67108864.0 + (b >> 6)) * (1.0 / 9007199254740992.0)
        u2 = ((c >> 5) * 67108864.0 + (d >> 6)) * (1.0 / 9007199254740992.0)
        x2pi = u1 * _TWOPI
        g2rad = math.sqrt(-2.0 * math.log(1.0 - u2))
        return math.cos(x2pi) * g2rad, math.sin(x2pi) * g2rad

    def choices(self, at: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        """random.choice over n items from word `at` on: up to _BUFFER picks, and the word
        (relative to `at`) each came from. CPython takes the top n.bit_length() bits of a
        word and draws again while they are >= n."""
        words = self.upto(at + _WINDOW)[at : at + _WINDOW]
        picks = words >> np.uint32(32 - n.bit_length())
        taken = np.flatnonzero(picks < n)[:_BUFFER]
        return picks[taken].astype(np.intp), taken


def _row_sums(prob: np.ndarray) -> np.ndarray:
    """Python's sum() of each row, as langdetect normalizes: left to right before 3.12,
    compensated from 3.12 on. Few rows: sum() itself; many (before 3.12): one numpy
    addition per column, the same left-to-right order for every row at once."""
    if len(prob) < 32 or sys.version_info >= (3, 12):
        return np.array([sum(row) for row in prob.tolist()])
    total = prob[:, 0].copy()
    for j in range(1, prob.shape[1]):
        total += prob[:, j]
    return total


def _langprobs(texts: list[_Features], model: _Model) -> np.ndarray:
    """langdetect's language probabilities for many texts at once, bit for bit.

    Each text is (the profile-table row of each n-gram langdetect extracted, its starting
    probabilities). langdetect runs 7 trials a text; each multiplies the probabilities by a
    randomly chosen n-gram's row ~70 times, normalizing every 5th time, until one language
    passes 0.99999. Texts are independent, so all of them step together here: one numpy
    operation per block of 5 updates for every text, where langdetect does ~8 Python-level
    steps per update for one text. Every float operation is the one langdetect does, in its
    order (products and quotients are exact IEEE operations; sums add left to right), and the
    random draws are read from the same generator stream, so the results are identical.
    """
    table, stream, n_trial = model.table, model.stream, model.n_trial
    count, width = len(texts), table.shape[1]
    prob = np.empty((count, width))
    langprob = np.zeros((count, width))
    weight = np.empty(count)
    buf = np.zeros((count, _BUFFER), dtype=np.intp)  # profile rows of the picked n-grams
    word = np.zeros((count, _BUFFER), dtype=np.intp)  # the stream word of each pick
    have = np.zeros(count, dtype=np.intp)  # picks in buf
    pos = np.zeros(count, dtype=np.intp)  # the next pick to use
    start = np.zeros(count, dtype=np.intp)  # stream position of buf's first word
    step = np.zeros(count, dtype=np.intp)  # langdetect's i: updates done in this trial
    trial = np.zeros(count, dtype=np.intp)
    cached: list[float | None] = [None] * count  # random.gauss's second value

    def fill(t: int, at: int) -> None:
        picks, taken = stream.choices(at, len(texts[t][0]))
        k = len(picks)
        buf[t, :k], word[t, :k], have[t], pos[t], start[t] = texts[t][0][picks], taken, k, 0, at

    def begin_trial(t: int, at: int) -> None:
        z = cached[t]
        cached[t] = None
        if z is None:
            z, cached[t] = stream.gauss_pair(at)
            at += 4
        alpha = _ALPHA + (0.0 + z * 1.0) * _ALPHA_WIDTH  # gauss returns mu + z * sigma
        weight[t] = alpha / _BASE_FREQ
        prob[t] = texts[t][1]
        step[t] = 0
        fill(t, at)

    def consumed(t: int) -> int:  # the stream position after the last pick used
        return int(start[t] + word[t, pos[t] - 1] + 1) if pos[t] else int(start[t])

    def run_alone(t: int) -> None:
        # The last text still running (or the only one): the same steps on one row, without
        # the batch bookkeeping, ~10x cheaper a step than a batch of one.
        while trial[t] < n_trial:
            take = 1 if step[t] == 0 else _BLOCK
            if pos[t] + take > have[t]:
                fill(t, consumed(t))
            p, w = prob[t], weight[t]
            for row in buf[t, pos[t] : pos[t] + take].tolist():
                p *= table[row] + w
            p /= sum(p.tolist())
            pos[t] += take
            step[t] += take
            if _largest(p) > _CONV or step[t] - 1 >= _LIMIT:
                langprob[t] += p / n_trial
                trial[t] += 1
                if trial[t] < n_trial:
                    begin_trial(t, consumed(t))

    for t in range(count):
        begin_trial(t, 0)
    active = np.arange(count)
    offsets = np.arange(_BLOCK)
    while len(active) > 1:
        first = step[active] == 0  # langdetect normalizes after its first update too
        take = np.where(first, 1, _BLOCK)
        for t in active[pos[active] + take > have[active]]:
            fill(t, consumed(t))  # rare: a trial longer than _BUFFER updates
        cols = np.minimum(pos[active, None] + offsets, _BUFFER - 1)
        factors = table[buf[active[:, None], cols]]  # (texts, 5, languages)
        factors += weight[active, None, None]  # langdetect's weight + p
        factors[first, 1:] = 1.0  # x * 1.0 == x exactly: a first block has one update
        block = prob[active]
        for j in range(_BLOCK):
            block *= factors[:, j]
        block /= _row_sums(block)[:, None]
        prob[active] = block
        pos[active] += take
        step[active] += take
        stop = (_largest(block, axis=1) > _CONV) | (step[active] - 1 >= _LIMIT)
        if not stop.any():
            continue
        ended = active[stop]
        langprob[ended] += prob[ended] / n_trial
        trial[ended] += 1
        for t in ended[trial[ended] < n_trial]:
            begin_trial(t, consumed(t))
        active = active[trial[active] < n_trial]
    if len(active):
        run_alone(int(active[0]))
    return langprob


class _Model:
    """langdetect's profiles as one float64 matrix (87,598 n-grams x 55 languages, 38 MB),
    its factory (for text cleaning and n-gram extraction) and the seeded random stream."""

    def __init__(self) -> None:
        languages, self.rows, self.table = _load_profiles(PROFILES_DIRECTORY)
        factory = DetectorFactory()
        factory.langlist = list(languages)
        # n-gram extraction only tests membership: the map holds row ids, not 55 floats each.
        factory.word_lang_prob_map = self.rows
        # Seeded: langdetect samples n-grams at random, so without a seed results vary by run.
        factory.set_seed(0)
        self.factory = factory
        self.languages: tuple[str, ...] = tuple(languages)
        self.stream = _Stream(factory.seed)
        self.n_trial: int = Detector(factory).n_trial  # set in its __init__ (7)

    def features(self, text: str, prior: dict[str, float] | None) -> _Features | None:
        """The profile row of each n-gram langdetect samples from, and its starting
        probabilities (the prior, else uniform); None when the text has no n-gram."""
        detector = Detector(self.factory)
        if prior:
            detector.set_prior_map(prior)
        detector.append(text)
        detector.cleaning_text()
        ngrams = detector._extract_ngrams()
        if not ngrams:
            return None  # langdetect raises CantDetectError: "No features in text."
        rows = np.array([self.rows[w] for w in ngrams], dtype=np.intp)
        n = len(self.languages)
        start = detector.prior_map if detector.prior_map is not None else [1.0 / n] * n
        return rows, np.array(start, dtype=np.float64)

    def ranked(self, langprob: np.ndarray) -> list[tuple[str, float]]:
        """langdetect's get_probabilities(): languages above 0.1, most probable first (its
        sort, stable among equals)."""
        above = [
            Language(lang, p)
            for lang, p in zip(self.languages, langprob.tolist(), strict=True)
            if p > Detector.PROB_THRESHOLD
        ]
        above.sort(reverse=True)
        return [(x.lang, x.prob) for x in above]


_Features = tuple[np.ndarray, np.ndarray]


def _load_profiles(directory: str) -> tuple[list[str], dict[str, int], np.ndarray]:
    """What DetectorFactory.load_profile builds (its languages in its order, and each
    n-gram's probability in each language), read straight into a matrix: a quarter of the
    time of its loader and the list-to-array copy (BENCHMARKS.md), and the
    same numbers (float64 division either way; a test compares the two).
    Returns (languages, n-gram -> row, table)."""
    names = os.listdir(directory)
    width = len(names)  # langdetect sizes each row by the directory's entry count
    languages: list[str] = []
    rows: dict[str, int] = {}
    columns: list[tuple[np.ndarray, np.ndarray]] = []
    for name in names:
        path = os.path.join(directory, name)
        if name.startswith(".") or not os.path.isfile(path):
            continue
        with open(path, encoding="utf-8") as fh:
            profile = json.load(fh)
        if profile["name"] in languages:
            raise ValueError(f"duplicate language profile {profile['name']!r} in {directory}")
        languages.append(profile["name"])
        freq: dict[str, int] = profile["freq"]
        for word in freq:
            rows.setdefault(word, len(rows))
        n = len(freq)
        index = np.fromiter(map(rows.__getitem__, freq), np.intp, n)
        count = np.fromiter(freq.values(), np.float64, n)
        lengths = np.fromiter(map(len, freq), np.intp, n)
        # langdetect stores 1.0 * count / n_words[len - 1] for 1- to 3-grams, else nothing.
        gram = (lengths >= 1) & (lengths <= 3)
        totals = np.asarray(profile["n_words"], dtype=np.float64)
        columns.append((index[gram], count[gram] / totals[lengths[gram] - 1]))
    table = np.zeros((len(rows), width), dtype=np.float64)
    for col, (index, probs) in enumerate(columns):
        table[index, col] = probs
    return languages, rows, table


@lru_cache(maxsize=1)
def _langdetect_model() -> _Model:
    return _Model()


def langdetect_probabilities(
    items: Sequence[tuple[str, dict[str, float] | None]],
) -> list[list[tuple[str, float]] | None]:
    """langdetect's get_probabilities() for each (text, prior map or None), all texts at
    once; None where langdetect finds no feature (it raises)."""
    model = _langdetect_model()
    feats = [model.features(text, prior) for text, prior in items]
    known = [f for f in feats if f is not None]
    probs = iter(_langprobs(known, model) if known else ())
    return [None if f is None else model.ranked(next(probs)) for f in feats]


def _primary(tag: str | None) -> str | None:
    return tag.split("-", 1)[0] if tag else None


@lru_cache(maxsize=256)
def _prior(hint: str | None) -> dict[str, float] | None:
    """langdetect's prior for a page language: HINT_PRIOR on it (shared by its variants,
    e.g. zh-cn and zh-tw), the rest spread evenly; None without a usable hint."""
    languages = _langdetect_model().languages
    hinted = _primary(hint)
    targets = [x for x in languages if _primary(x) == hinted] if hinted else []
    if not targets:
        return None
    rest = (1.0 - HINT_PRIOR) / len(languages)
    prior = dict.fromkeys(languages, rest)
    for x in targets:
        prior[x] = rest + HINT_PRIOR / len(targets)
    return prior


# An alt-text may recur on up to 10 images (ALIGN's rule): answers are kept per process.
_ANSWERS: dict[tuple[str, str | None], str | None] = {}
_ANSWERS_MAX = 1 << 16
_ANSWERS_LOCK = threading.Lock()


def detect_langdetect_all(items: Sequence[tuple[str, str | None]]) -> list[str | None]:
    """langdetect's answer for each (text, page language), the page language as a prior;
    None where it is unsure. All new texts are detected together (see _langprobs)."""
    keys = [(text, _primary(hint)) for text, hint in items]
    with _ANSWERS_LOCK:
        new = list(dict.fromkeys(k for k in keys if k not in _ANSWERS))
        ranked = langdetect_probabilities([(text, _prior(hint)) for text, hint in new])
        answers = {k: (r[0][0] if r else None) for k, r in zip(new, ranked, strict=True)}
        answers.update((k, _ANSWERS[k]) for k in keys if k not in answers)
        if len(_ANSWERS) + len(new) > _ANSWERS_MAX:
            _ANSWERS.clear()
        _ANSWERS.update(answers)
    return [answers[k] for k in keys]


def detect_cld2(text: str, hint: str | None) -> str | None:
    """CLD2's best guess (pycld2, model compiled in); None when it has none."""
    try:
        # CLD2 calls most alt-texts unreliable (they are short); its best guess is still
        # what langdetect would give, so the flag is not used.
        _, _, details = pycld2.detect(text, **_cld2_hint(hint))
    except pycld2.error:
        return None
    code = details[0][1] if details else "un"
    if code in ("un", "xxx"):
        return None
    return code.lower()


def _cld2_hint(hint: str | None) -> dict[str, str]:
    code = _primary(hint)
    # pycld2 refuses hints it does not know, and an empty one.
    return {"hintLanguage": code} if code and code in _cld2_codes() else {}


@lru_cache(maxsize=1)
def _cld2_codes() -> frozenset[str]:
    return frozenset(code for _, code in pycld2.LANGUAGES)


def detect_cld2_all(items: Sequence[tuple[str, str | None]]) -> list[str | None]:
    """CLD2's best guess for each (text, page language)."""
    return [detect_cld2(text, hint) for text, hint in items]


DETECTORS = {"langdetect": detect_langdetect_all, "cld2": detect_cld2_all}


def detect_languages(
    items: Sequence[tuple[str, str | None]], detector: str = "langdetect"
) -> list[str | None]:
    """The language of each (alt-text, page language) as a lowercase tag, or None when
    undetermined. Pass many at once: langdetect then runs them together, 0.28x the time a
    text of one call each (bench/bench_language.py: 345 vs 1,212 µs)."""
    return DETECTORS[detector](items)


def detect_language(text: str, hint: str | None, detector: str = "langdetect") -> str | None:
    """The language of one alt-text as a lowercase tag, or None when undetermined."""
    return detect_languages([(text, hint)], detector)[0]


def check_language(lang: str | None, cfg: CurationConfig) -> Rejection | None:
    """Reject a text outside the configured languages (none configured: keep all)."""
    if not cfg.languages:
        return None
    if lang is not None and any(lang == x or lang.startswith(x + "-") for x in cfg.languages):
        return None
    return Rejection(_STAGE, reasons.LANGUAGE_NOT_SELECTED, lang or "unknown")
