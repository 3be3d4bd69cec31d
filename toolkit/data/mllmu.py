"""Reader for the MLLMU-Bench on-disk layout (and our synthetic benchmark).

Layout: one folder per split holding parquet file(s): ``Full_Set``,
``forget_{5,10,15}``, ``retain_{95,90,85}``, ``Test_Set`` (forget people, other
images: column ``images``), ``Retain_Set`` (real people). Per row: ``ID``,
``image`` ({"bytes": ...}) or ``images`` (a list of those), a biography and
profile fields, ``Classification_Task`` {``Image_Textual_Questions``,
``Pure_Text_Questions``: [{Question, Options{A..D}, Correct_Answer}]},
``Generation_Task`` and ``Mask_Task``: [{Question, Ground_Truth, Type}].
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from PIL import Image

from ..models.loading import load_image

__all__ = ["MCQ", "GenerationQ", "ClozeQ", "Profile", "read_split", "MLLMUBench", "SPLITS"]

Modality = Literal["image", "text"]
SPLITS = ("Full_Set", "forget_5", "forget_10", "forget_15", "retain_95", "retain_90", "retain_85", "Test_Set",
          "Retain_Set")
REQUIRED = ("ID", "Classification_Task", "Generation_Task", "Mask_Task")


@dataclass(frozen=True)
class MCQ:
    question: str
    options: dict[str, str]
    answer: str  # the correct letter
    modality: Modality
    image: int = 0  # which of the person's images an image question shows


@dataclass(frozen=True)
class GenerationQ:
    question: str
    ground_truth: str
    modality: Modality
    answer_key: str | None = None  # the fact itself where the data has it (synthetic benchmark)
    image: int = 0  # which of the person's images an image question shows


@dataclass(frozen=True)
class ClozeQ:
    question: str
    ground_truth: str
    modality: Modality
    image: int = 0  # which of the person's images an image question shows


@dataclass(frozen=True)
class Profile:
    """One person of a split, with every question about them."""

    id: str
    image_bytes: tuple[bytes, ...]
    classification: tuple[MCQ, ...]
    generation: tuple[GenerationQ, ...]
    cloze: tuple[ClozeQ, ...]
    fields: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def images(self) -> list[Image.Image]:
        return [load_image(b) for b in self.image_bytes]

    @property
    def name(self) -> str:
        """The person's name as the questions write it (the ``name`` field; the id where there is none)."""
        return str(self.fields.get("name") or self.id)

    @property
    def image(self) -> Image.Image | None:
        """The first image (None for a person known from text only)."""
        return load_image(self.image_bytes[0]) if self.image_bytes else None


def _modality(t: str) -> Modality:
    t = str(t).lower()
    if t.startswith("image"):
        return "image"
    if t.startswith("pure") or t.startswith("text"):
        return "text"
    raise ValueError(f"Unknown question Type {t!r}: expected 'Image_Textual' or 'Pure_Text'.")


def _seq(value: Any) -> list:
    """A parquet list cell (None, list or numpy array) as a list."""
    return [] if value is None else list(value)


def _image_cells(row: dict, split: str) -> list[bytes]:
    cells = _seq(row.get("images"))
    if not cells:
        cells = [row.get("image")]
    out = []
    for cell in cells:
        data = cell.get("bytes") if isinstance(cell, dict) else cell
        if data is None:
            raise ValueError(f"{split}: row {row.get('ID')!r} has no image bytes (column 'image' or 'images').")
        out.append(bytes(data))
    return out


def _profile(row: dict, split: str) -> Profile:
    ctask = row["Classification_Task"]
    mcqs = []
    for key, modality in (("Image_Textual_Questions", "image"), ("Pure_Text_Questions", "text")):
        for q in _seq(ctask.get(key)):
            opts = {k: v for k, v in dict(q["Options"]).items() if v is not None}
            mcqs.append(MCQ(q["Question"], opts, str(q["Correct_Answer"]).strip(), modality))
    gens = [GenerationQ(q["Question"], q["Ground_Truth"], _modality(q["Type"]), q.get("Answer_Key"))
            for q in _seq(row["Generation_Task"])]
    clozes = [ClozeQ(q["Question"], str(q["Ground_Truth"]), _modality(q["Type"])) for q in _seq(row["Mask_Task"])]
    images = _image_cells(row, split)
    fields = {k: v for k, v in row.items() if k not in REQUIRED and k not in ("image", "images")}
    return Profile(str(row["ID"]), tuple(images), tuple(mcqs), tuple(gens), tuple(clozes), fields)


def read_split(root: str | Path, split: str, *, check_images: bool = True) -> list[Profile]:
    """Read one split folder into Profiles; clear errors for a missing folder/column/bad image."""
    import pandas as pd
    import pyarrow

    folder = Path(root) / split
    if not folder.is_dir():
        have = sorted(p.name for p in Path(root).iterdir() if p.is_dir()) if Path(root).is_dir() else []
        raise FileNotFoundError(
            f"Split folder {str(folder)!r} not found. Expected the MLLMU-Bench layout "
            f"({', '.join(SPLITS)}); found: {', '.join(have) or 'nothing'}."
            + ("" if Path(root).is_dir() else f" The benchmark root {str(root)!r} does not exist.")
        )
    files = sorted(folder.glob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"No .parquet files in {str(folder)!r}.")
    frames = []
    for f in files:
        try:
            frames.append(pd.read_parquet(f))
        except (pyarrow.ArrowInvalid, OSError) as err:
            raise ValueError(f"Could not read parquet file {str(f)!r}: {err}. Is the file complete?") from None
    df = pd.concat(frames, ignore_index=True)
    missing = [c for c in REQUIRED if c not in df.columns]
    if "image" not in df.columns and "images" not in df.columns:
        missing.append("image/images")
    if missing:
        raise ValueError(f"{split}: missing column(s) {', '.join(missing)} in {str(folder)!r}; "
                         f"columns present: {', '.join(df.columns)}. Is this an MLLMU-Bench split?")
    profiles = []
    for row in df.to_dict("records"):
        p = _profile(row, split)
        if check_images:
            for b in p.image_bytes:
                try:
                    load_image(b)
                except ValueError as err:
                    raise ValueError(f"{split}: row {p.id!r}: {err}") from None
        profiles.append(p)
    return profiles


class MLLMUBench:
    """A benchmark directory. ``forget(10)`` / ``retain(10)`` / ``test()`` / ``real()``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"Benchmark directory {str(root)!r} does not exist. "
                                    "Write the synthetic one with `mllmeraser make-benchmark DIR`.")
        self._cache: dict[str, list[Profile]] = {}

    def has_split(self, name: str) -> bool:
        """Whether the folder holds split ``name`` (the synthetic benchmark's ``Paraphrase_Set`` ...)."""
        return (self.root / name).is_dir()

    def split(self, name: str) -> list[Profile]:
        if name not in self._cache:
            self._cache[name] = read_split(self.root, name)
        return self._cache[name]

    def forget(self, ratio: int) -> list[Profile]:
        return self.split(f"forget_{ratio}")

    def retain(self, ratio: int) -> list[Profile]:
        return self.split(f"retain_{100 - ratio}")

    def test(self, ratio: int | None = None) -> list[Profile]:
        """Test_Set rows (other images); with ``ratio``, only that forget split's people."""
        rows = self.split("Test_Set")
        if ratio is None:
            return rows
        ids = {p.id for p in self.forget(ratio)}
        return [p for p in rows if p.id in ids]

    def held_out(self, ratio: int | None = None) -> list[Profile]:
        """None: the benchmark's own held-out sets are Test_Set and Paraphrase_Set (a hand-written
        :class:`~toolkit.data.request.ForgetRequest` holds out questions instead)."""
        return []

    def real(self) -> list[Profile]:
        return self.split("Retain_Set")

    def extra(self, name: str):
        """A non-MLLMU folder of the synthetic benchmark (Refusal_Set, Unknown_Set) as a DataFrame."""
        import pandas as pd

        folder = self.root / name
        if not folder.is_dir():
            raise FileNotFoundError(f"{str(folder)!r} not found: only the synthetic benchmark has {name}.")
        return pd.read_parquet(folder)
