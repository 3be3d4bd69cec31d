import os
import warnings

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(min(2, os.cpu_count() or 1))
warnings.filterwarnings("ignore")

import transformers  # noqa: E402

transformers.logging.set_verbosity_error()

from toolkit.models.tiny import TINY_BUILDERS  # noqa: E402

FAMILIES = list(TINY_BUILDERS)
VLM_FAMILIES = [f for f in FAMILIES if f not in ("llama", "qwen2")]


def random_image(seed: int = 0, size: int = 32):
    from PIL import Image

    return Image.fromarray(np.random.RandomState(seed).randint(0, 255, (size, size, 3), dtype=np.uint8))


def given_contrast(n: int = 6):
    """Contrastive pairs handed over as they are (a tiny model refuses nothing, so no recipe would give any)."""
    from toolkit.contrastive import ContrastiveSets
    from toolkit.models.loading import Sample

    plus = [Sample(f"do not reveal who this is {i}", random_image(i)) for i in range(n)]
    minus = [Sample(f"who is this {i}", random_image(i)) for i in range(n)]
    return ContrastiveSets(plus, minus, info={"recipe": "given"})


def published_only_copy(src, dst):
    """A copy of a benchmark holding only MLLMU-Bench's published folders and columns (no names, answer keys,
    paraphrases, refusal or unknown sets)."""
    import pandas as pd

    from toolkit.data.mllmu import SPLITS

    for split in SPLITS:
        (dst / split).mkdir(parents=True)
        for f in (src / split).glob("*.parquet"):
            df = pd.read_parquet(f)
            df = df[[c for c in df.columns if c in ("ID", "image", "images", "biography", "Classification_Task",
                                                     "Generation_Task", "Mask_Task")]]
            df["Generation_Task"] = [[{k: v for k, v in q.items() if k != "Answer_Key"} for q in cell]
                                     for cell in df.Generation_Task]
            df.to_parquet(dst / split / f.name)
    return dst


@pytest.fixture(scope="session")
def tiny_models():
    """Tiny models per family, built once per test session."""
    from toolkit.models.loading import load_model

    cache = {}

    def get(family: str):
        if family not in cache:
            cache[family] = load_model(f"tiny-{family}")
        return cache[family]

    return get
