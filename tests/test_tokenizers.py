"""Offline tokenizers: WordPiece from the MiniLM package, CLIP BPE from open-clip-torch's vocabulary."""

from __future__ import annotations

import numpy as np
import pytest

from pikagen_jax.data.tokenizers import ClipBpeTokenizer, WordPieceTokenizer, default_bert_dir, find_clip_vocab

TEXT = "A strange seed was planted on its back at birth. The plant sprouts and grows with this Pokémon."


def _bert_dir():
    try:
        return default_bert_dir()
    except FileNotFoundError as e:
        pytest.skip(str(e))


def _clip_vocab():
    try:
        return find_clip_vocab()
    except FileNotFoundError as e:
        pytest.skip(str(e))


def test_wordpiece_round_trip_padding_and_truncation():
    tok = WordPieceTokenizer(_bert_dir(), max_length=48)
    ids, mask = tok([TEXT, "Pikachu"])
    assert ids.shape == (2, 48) and ids.dtype == np.int32
    assert tok.decode(ids[0]) == ("a strange seed was planted on its back at birth. "
                                  "the plant sprouts and grows with this pokemon.")
    assert mask[1].tolist()[:6] == [1, 1, 1, 1, 1, 0]  # [CLS] pi ##ka ##chu [SEP]
    assert (ids[1, 5:] == 0).all() and ids[1, 4] == 102
    short = WordPieceTokenizer(_bert_dir(), max_length=8)
    ids, mask = short([TEXT])
    assert mask.sum() == 8 and ids[0, -1] == 102  # truncated, still ends with [SEP]


def test_wordpiece_matches_transformers_tokenizer():
    transformers = pytest.importorskip("transformers")
    ref = transformers.AutoTokenizer.from_pretrained(str(_bert_dir()))
    ours = WordPieceTokenizer(_bert_dir(), max_length=40)
    ids, mask = ours([TEXT])
    expected = ref(TEXT, padding="max_length", max_length=40, truncation=True)
    assert ids[0].tolist() == expected["input_ids"] and mask[0].tolist() == expected["attention_mask"]


def test_clip_bpe_round_trip_and_special_tokens():
    tok = ClipBpeTokenizer(_clip_vocab(), max_length=77)
    ids, mask = tok([TEXT])
    n = int(mask.sum())
    assert ids[0, 0] == 49406 and ids[0, n - 1] == 49407 and (ids[0, n:] == 0).all()
    assert tok.decode(ids[0]) == "a strange seed was planted on its back at birth . the plant sprouts and grows with this pokémon ."
    ids, mask = ClipBpeTokenizer(_clip_vocab(), max_length=10)([TEXT])
    assert mask.sum() == 10 and ids[0, -1] == 49407


def test_clip_bpe_matches_transformers_clip_tokenizer(tmp_path):
    """Parity with transformers' CLIPTokenizer built from the same vocabulary file."""
    transformers = pytest.importorskip("transformers")
    import json

    ours = ClipBpeTokenizer(_clip_vocab(), max_length=77)
    (tmp_path / "vocab.json").write_text(json.dumps(ours.encoder))
    merges = sorted(ours.bpe_ranks, key=ours.bpe_ranks.get)
    (tmp_path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    ref = transformers.CLIPTokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"),
                                     bos_token="<start_of_text>", eos_token="<end_of_text>",
                                     unk_token="<end_of_text>", pad_token="<end_of_text>")
    for text in (TEXT, "It's a Fire/Flying type—hot!! 123 cm", "Charizard's wings"):
        expected = ref(text)["input_ids"]
        ids, mask = ours([text])
        assert ids[0, : mask.sum()].tolist() == expected, text


def test_empty_text_is_a_clear_error():
    tok = WordPieceTokenizer(_bert_dir(), max_length=8)
    with pytest.raises(ValueError, match="empty"):
        tok(["   "])


def test_missing_vocab_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer.json or vocab.txt"):
        WordPieceTokenizer(tmp_path)
