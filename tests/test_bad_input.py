"""Bad input: one clear error naming the problem, never a silent wrong result (one test per case)."""

import subprocess
import sys

import pytest
import torch

from conftest import random_image
from toolkit import tracing
from toolkit.eraser import Eraser, EraserLayer
from toolkit.models.loading import Sample, load_model


@pytest.fixture(scope="module")
def llava():
    return load_model("tiny-llava")


def one_map(model, layer=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    return EraserLayer(layer, torch.randn(model.hidden_size, 1, generator=g) * 0.3,
                       torch.randn(1, model.hidden_size, generator=g))


@pytest.mark.parametrize("lam", [float("nan"), float("inf"), -float("inf"), "strong"])
def test_non_finite_strength_refused(llava, lam):
    with pytest.raises(ValueError, match="lam must be a finite number"):
        Eraser((one_map(llava),), lam)
    with pytest.raises(ValueError, match="lam must be a finite number"):
        Eraser((one_map(llava),), 1.0).with_options(lam=lam)


def test_non_finite_map_refused(llava):
    m = one_map(llava)
    bad = EraserLayer(1, m.gates.clone().index_fill_(0, torch.tensor([3]), float("nan")), m.directions)
    with pytest.raises(ValueError, match="layer 1 contains NaN/inf"):
        Eraser((bad,), 1.0)


def test_steer_returning_nan_is_refused_not_generated(llava):
    steer = tracing.Steer(1, lambda h: torch.full_like(h, float("nan")))
    with pytest.raises(FloatingPointError, match="steer at layer 1 returned NaN/inf"):
        tracing.generate(llava, [Sample("who is this", random_image())], steers=[steer], max_new_tokens=3)


def test_wrong_shape_steer_is_named(llava):
    steer = tracing.Steer(2, lambda h: torch.zeros(h.shape[0], h.shape[1] + 1))
    with pytest.raises(ValueError, match=r"steer at layer 2 returned a shift of shape \(1, 65\)"):
        tracing.forward(llava, [Sample("who is this", random_image())], steers=[steer])


def test_prompt_longer_than_context_refused(llava):
    words = " ".join(["person"] * (llava.context_length + 10))
    with pytest.raises(ValueError, match=r"this model's context is 512 tokens"):
        tracing.generate(llava, [Sample(words)], max_new_tokens=2)


@pytest.mark.parametrize("text", ["", "   \n"])
def test_empty_prompt_refused(llava, text):
    with pytest.raises(ValueError, match="empty prompt"):
        tracing.generate(llava, [Sample(text)], max_new_tokens=2)


def test_negative_layer_keys_on_capture_results(llava):
    cap = tracing.capture(llava, [Sample("who is this", random_image())], [0, -1])
    assert sorted(cap.activations) == [0, 2]
    assert torch.equal(cap[-1], cap[2]) and torch.equal(cap[-3], cap[0])
    with pytest.raises(KeyError, match=r"Layer 1 was not captured; this capture holds layers \[0, 2\]"):
        cap[1]


def test_eraser_header_must_list_exactly_its_maps(llava, tmp_path):
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open

    path = Eraser((one_map(llava, 1), one_map(llava, 2, seed=1)), 1.0).save(tmp_path / "e.safetensors")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    tensors = load_file(str(path))
    meta["layers"] = "[1]"  # the header forgets layer 2, whose maps are still in the file
    save_file(tensors, str(tmp_path / "edited.safetensors"), metadata=meta)
    with pytest.raises(ValueError, match=r"holds tensors \['layer2.directions', 'layer2.gates'\]"):
        Eraser.load(tmp_path / "edited.safetensors")


def test_unknown_model_offline_one_line(llava, monkeypatch):
    from toolkit.models.loading import load_model as load

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match="neither 'default', 'default-qwen', 'tiny-<family>' nor a local "
                                         "directory, and hub access is off"):
        load("does-not-exist")


def test_cli_unknown_model_prints_one_line_exit_2():
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-m", "experiments.cli", "generate", "--model", "does-not-exist",
                           "--prompt", "hi"], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("mllmeraser generate: error: Model 'does-not-exist' is neither")
    assert "Traceback" not in proc.stderr and proc.stdout == ""
