"""Reader for the PokeAPI layout: a JSONL file with several flavor texts per species + sprite folders."""

from __future__ import annotations

import json
from pathlib import Path

from data_prep.records import ReadResult, SpeciesRecord, normalize_text

SPRITE_FOLDERS = ("sprites96_pixel", "sprites96_art", "sprites")


def _find_jsonl(source_dir: Path) -> Path:
    candidates = sorted(source_dir.glob("*.jsonl"))
    if not candidates:
        raise FileNotFoundError(f"no *.jsonl species file in {source_dir}: a PokeAPI-layout source "
                                "needs e.g. pokeapi_species_en.jsonl plus a sprite folder")
    return candidates[0]


def read_pokeapi(source_dir: Path | str, sprite_folder: str | None = None) -> ReadResult:
    """Reads the PokeAPI layout. `sprite_folder` picks the sprite set (default: the first of
    sprites96_pixel, sprites96_art, sprites that exists)."""
    source_dir = Path(source_dir)
    jsonl = _find_jsonl(source_dir)
    folders = [sprite_folder] if sprite_folder else list(SPRITE_FOLDERS)
    sprites = next((source_dir / f for f in folders if (source_dir / f).is_dir()), None)
    if sprites is None:
        raise FileNotFoundError(f"no sprite folder ({', '.join(folders)}) in {source_dir}")
    result = ReadResult(records=[])
    seen: dict[int, int] = {}
    with open(jsonl, encoding="utf-8") as f:
        for line, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            where = f"{jsonl.name}:{line}"
            try:
                row = json.loads(raw)
                number = int(row["national_number"])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                result.skipped.append((where, f"unreadable row: {e}"))
                continue
            texts: list[str] = []
            for entry in row.get("flavor_texts") or []:
                text = normalize_text(entry["text"] if isinstance(entry, dict) else str(entry))
                if text and text not in texts:
                    texts.append(text)
            if not texts:
                result.skipped.append((where, f"#{number} {row.get('name')}: no flavor text"))
                continue
            if number in seen:
                result.skipped.append((where, f"duplicate national_number {number} "
                                              f"(first at line {seen[number]})"))
                continue
            seen[number] = line
            result.records.append(SpeciesRecord(
                national_number=number,
                name=str(row.get("name") or row.get("slug") or number),
                types=[str(t).lower() for t in row.get("types") or []],
                classification=normalize_text(row.get("genus") or ""),
                descriptions=texts,
                image_path=sprites / f"{number:04d}.png",
                source_row=where,
            ))
    return result
