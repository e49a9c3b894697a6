"""Reader for the Kaggle layout: `pokemon_data.csv` (';'-separated) + `sprites/NNN.png`."""

from __future__ import annotations

import csv
from pathlib import Path

from data_prep.records import ReadResult, SpeciesRecord, normalize_text
from pikagen_jax.errors import UserError

REQUIRED_COLUMNS = ("national_number", "english_name", "primary_type", "description")


def _sprite_path(sprites: Path, number: int) -> Path:
    for name in (f"{number:03d}.png", f"{number:04d}.png", f"{number}.png"):
        if (sprites / name).is_file():
            return sprites / name
    return sprites / f"{number:03d}.png"


MAX_FIELD_BYTES = 1 << 20  # csv's own limit is 128 KiB; a larger field is reported, not a crash
MAX_DESCRIPTION_CHARS = 5000  # Pokédex entries are a sentence or two


class SourceFormatError(UserError, ValueError):
    """A source file that cannot be read as its layout (columns, quoting)."""


def read_kaggle(source_dir: Path | str) -> ReadResult:
    """Reads the Kaggle layout. Rows without a description or with a duplicate number are skipped
    and reported; a missing sprite is reported later, when the image is decoded."""
    source_dir = Path(source_dir)
    csv_path = source_dir / "pokemon_data.csv"
    if not csv_path.is_file():
        raise FileNotFoundError(
            f"{csv_path} not found: a Kaggle-layout source needs pokemon_data.csv and sprites/ "
            "(pass the folder that holds them)")
    sprites = source_dir / "sprites"
    result = ReadResult(records=[])
    seen: dict[int, int] = {}
    csv.field_size_limit(MAX_FIELD_BYTES)
    with open(csv_path, newline="", encoding="utf-8", errors="replace") as f:
        reader = csv.DictReader(f, delimiter=";")
        missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise SourceFormatError(f"{csv_path}: missing column(s) {missing}; is it ';'-separated? "
                                    f"header is {reader.fieldnames}")
        rows = enumerate(reader, start=2)  # line 1 is the header
        while True:
            try:
                line, row = next(rows)
            except StopIteration:
                break
            except csv.Error as error:  # a field past the size limit: broken quoting ate the rest of the file
                raise SourceFormatError(f"{csv_path} near line {reader.line_num}: {error}; check the quoting of "
                                        "that row (a quote opened and never closed swallows the rows after it)"
                                        ) from error
            where = f"{csv_path.name}:{line}"
            short = [c for c in REQUIRED_COLUMNS if row.get(c) is None]
            if short:
                result.skipped.append((where, f"row has too few fields (no {', '.join(short)})"))
                continue
            if len(row.get("description") or "") > MAX_DESCRIPTION_CHARS:
                result.skipped.append((where, f"description of {len(row['description'])} characters (more than "
                                              f"{MAX_DESCRIPTION_CHARS}): a broken quote?"))
                continue
            try:
                number = int(str(row["national_number"]).strip())
            except ValueError:
                result.skipped.append((where, f"bad national_number {row['national_number']!r}"))
                continue
            description = normalize_text(row.get("description") or "")
            if not description:
                result.skipped.append((where, f"#{number} {row['english_name']}: no description"))
                continue
            if number in seen:
                result.skipped.append((where, f"duplicate national_number {number} "
                                              f"(first at line {seen[number]})"))
                continue
            seen[number] = line
            types = [t.strip().lower() for t in (row["primary_type"], row.get("secondary_type") or "")
                     if t and t.strip()]
            result.records.append(SpeciesRecord(
                national_number=number,
                name=row["english_name"].strip(),
                types=types,
                classification=normalize_text(row.get("classification") or ""),
                descriptions=[description],
                image_path=_sprite_path(sprites, number),
                source_row=where,
            ))
    return result
