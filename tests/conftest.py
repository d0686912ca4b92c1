"""Shared pytest fixtures: paths to the authors' parity fixtures, small real photos, determinism."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
# shared/ sits beside the checkout (../shared) for developers and CI.
REFERENCE = Path(os.environ.get("VFMTOK_SHARED", REPO.parent / "shared")) / "reference"
FIXTURES = REFERENCE / "checkpoints" / "fixtures"

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """`shared/reference/checkpoints/fixtures` (skips with a reason only if shared/ is absent)."""
    if not FIXTURES.is_dir():
        pytest.skip(f"parity fixtures not found at {FIXTURES} (set VFMTOK_SHARED to the shared/ folder)")
    return FIXTURES


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    if not REFERENCE.is_dir():
        pytest.skip(f"shared/reference not found at {REFERENCE}")
    return REFERENCE


@pytest.fixture
def one_thread():
    """Run a test single-threaded: tiny matmuls on a shared 2-core machine are far faster that way."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session", autouse=True)
def _private_gt_stats_cache(tmp_path_factory):
    """`evaluate --tokenizer` caches ground-truth statistics; tests use a private folder, not ~/.cache."""
    old = os.environ.get("VFMTOK_GT_STATS_CACHE")
    os.environ["VFMTOK_GT_STATS_CACHE"] = str(tmp_path_factory.mktemp("gt_stats_cache"))
    yield
    if old is None:
        os.environ.pop("VFMTOK_GT_STATS_CACHE", None)
    else:
        os.environ["VFMTOK_GT_STATS_CACHE"] = old


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A running fake Hugging Face Hub on loopback (tests/fake_hub.py) with HF_ENDPOINT pointing at it, a fake token,
    empty HF / vfmtok caches and the offline switches off."""
    from fake_hub import FakeHub

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("VFMTOK_CACHE", str(tmp_path / "vfmtok-cache"))
    monkeypatch.setenv("HF_TOKEN", "hf_fake_token_for_tests")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    with FakeHub() as fake:
        monkeypatch.setenv("HF_ENDPOINT", fake.endpoint)
        yield fake
