"""The resume state holds the CUDA generators too: dropout on a GPU draws from them, not from the CPU one."""

from __future__ import annotations

import io

import pytest
import torch

from distill.resume import rng_state, set_rng_state


def _through_a_checkpoint(state: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)  # what Lightning's resume does with it


def test_cuda_rng_state_is_saved_and_restored(monkeypatch):
    """With CUDA in use, the saved state carries every device's generator and loading it sets them back (CPU
    machine: the CUDA calls are stand-ins that record what they are given)."""
    devices = [torch.arange(16, dtype=torch.uint8), torch.arange(16, 32, dtype=torch.uint8)]
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [d.clone() for d in devices])
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", restored.extend)
    state = _through_a_checkpoint(rng_state())
    set_rng_state(state)
    assert len(restored) == 2 and all(torch.equal(a, b) for a, b in zip(restored, devices))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)  # resumed on fewer GPUs: left as they are
    restored.clear()
    set_rng_state(state)
    assert restored == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_dropout_masks_repeat_after_restore():
    """On a real GPU: a dropout mask drawn after restoring the saved state equals the one drawn after saving it,
    and differs from the next one (control)."""
    x = torch.ones(4096, device="cuda")
    torch.nn.functional.dropout(x, 0.5)  # initialise CUDA and move its generator off the seed
    state = _through_a_checkpoint(rng_state())
    first = torch.nn.functional.dropout(x, 0.5)
    second = torch.nn.functional.dropout(x, 0.5)
    set_rng_state(state)
    again = torch.nn.functional.dropout(x, 0.5)
    assert torch.equal(first, again) and not torch.equal(first, second)
