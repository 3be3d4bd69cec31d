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
