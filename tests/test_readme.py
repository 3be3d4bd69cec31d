"""The README's quickstart runs as written, and its three routes agree."""

import re
import runpy
from pathlib import Path

import torch

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_quickstart_runs_and_routes_agree(tmp_path):
    text = README.read_text()
    block = re.search(r"## Quickstart.*?```python\n(.*?)```", text, re.S).group(1)
    script = tmp_path / "quickstart.py"  # nnsight reads a trace's source back from its file
    script.write_text(block)
    scope = runpy.run_path(str(script))
    from toolkit import tracing

    model, eraser, forget, enc = scope["model"], scope["eraser"], scope["forget"], scope["enc"]
    width = enc["input_ids"].shape[1]
    want = tracing.generate(model, forget[:2], steers=eraser, max_new_tokens=24, return_ids=True)
    for row, w in enumerate(want):
        assert scope["ids"][row, width: width + len(w)].tolist() == w.tolist()
        assert scope["out"][row, width: width + len(w)].tolist() == w.tolist()
    gates = scope["gates"].per_step(7)
    assert len(gates) >= 1 and all(isinstance(g, float) for g in gates)
    assert torch.isfinite(torch.tensor(gates)).all()
