"""Hub references (`vfmtok.io.hub`) against a fake Hub on 127.0.0.1 (tests/fake_hub.py): downloads, cache hits, a
download resumed after a dropped connection, corrupt files refused, missing files named with their URL, offline
behaviour, the loaders and the CLI with `hf://`, and `timm:` encoder names through timm's pretrained path."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import vfmtok
from fake_hub import FakeHub
from vfmtok.io import hub as H

SHARED_GPT = "gpt_tiny/gpt_checkpoint.pt"


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    """A running fake Hub with HF_ENDPOINT pointing at it and empty HF / vfmtok caches under tmp_path."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("VFMTOK_CACHE", str(tmp_path / "vfmtok-cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    with FakeHub() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        yield hub


def test_parse_references(tmp_path, monkeypatch):
    assert H.parse_hub_ref("hf://me/run") == H.HubRef("me/run", "", None)
    assert H.parse_hub_ref("hf://me/run/a/b.pt@v1.0") == H.HubRef("me/run", "a/b.pt", "v1.0")
    assert H.parse_hub_ref(Path("hf://me/run/x.pt")) == H.HubRef("me/run", "x.pt", None)  # Path collapses '//'
    assert H.parse_hub_ref("authors/GPT-B") == H.HubRef("yexiguafu/VFMTok", "DINOv2/GPT-B/GPT-B-300e.pt", None)
    assert H.parse_hub_ref("authors/tokenizer@abc") == H.HubRef("yexiguafu/VFMTok",
                                                                "DINOv2/tokenizer/vfmtok-tokenizer.pt", "abc")
    assert H.parse_hub_ref("runs/ar") is None and H.parse_hub_ref("/abs/file.pt") is None
    with pytest.raises(ValueError, match="authors/GPT-B"):
        H.parse_hub_ref("authors/GPT-Q")
    with pytest.raises(ValueError, match="OWNER/REPO"):
        H.parse_hub_ref("hf://justone")
    with pytest.raises(ValueError, match="empty revision"):
        H.parse_hub_ref("hf://me/run/x@")
    monkeypatch.chdir(tmp_path)  # a local path of the same name wins over the short name
    (tmp_path / "authors").mkdir()
    (tmp_path / "authors" / "GPT-B").write_text("local")
    assert H.parse_hub_ref("authors/GPT-B") is None
    assert H.HubRef("me/run", "x.pt", "v2").url("http://h") == "http://h/me/run/resolve/v2/x.pt"


def test_download_cache_hit_and_resume(fake_hub):
    small, big = b'{"a": 1}', os.urandom(24 << 20)  # big > 2 x the 10 MiB chunk of huggingface_hub
    fake_hub.add_repo("me/run", {"config.json": small, "w/model.bin": big})
    fake_hub.truncate_once.add("me/run/w/model.bin")  # the first GET closes the connection at 12 MiB
    local = H.resolve_path("hf://me/run/w/model.bin", progress=False)
    assert local.read_bytes() == big and str(local).startswith(os.environ["HF_HUB_CACHE"])
    assert local.resolve().name == hashlib.sha256(big).hexdigest()  # cached under its published sha256
    assert fake_hub.hits["me/run/w/model.bin"] == 2
    assert fake_hub.ranges == ["me/run/w/model.bin bytes=10485760-"]  # resumed after the first 10 MiB
    again = H.resolve_path("hf://me/run/w/model.bin", progress=False)
    assert again == local and fake_hub.hits["me/run/w/model.bin"] == 2  # cache hit: no second download
    assert H.resolve_path("hf://me/run/config.json").read_bytes() == small  # git-sha1 id checked
    folder = H.resolve_path("hf://me/run", progress=False)
    assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) == ["config.json",
                                                                                          "w/model.bin"]


def test_corrupt_and_wrong_size_refused(fake_hub):
    data = os.urandom(5000)
    fake_hub.add_repo("me/bad", {"w.bin": data, "s.bin": data})
    fake_hub.corrupt.add("me/bad/w.bin")
    with pytest.raises(H.HubFileCorrupt, match=f"publishes {hashlib.sha256(data).hexdigest()}"):
        H.resolve_path("hf://me/bad/w.bin")
    cache = Path(os.environ["HF_HUB_CACHE"])
    assert not [p for p in cache.rglob("*") if p.is_file() and p.stat().st_size == 5000]  # nothing kept
    fake_hub.wrong_size.add("me/bad/s.bin")
    with pytest.raises(H.HubFileCorrupt, match="size"):
        H.resolve_path("hf://me/bad/s.bin")
    assert not [p for p in cache.rglob("*") if p.is_file() and p.stat().st_size == 5000]
    fake_hub.corrupt.clear()  # once the server is fixed, the same reference works
    assert H.resolve_path("hf://me/bad/w.bin").read_bytes() == data
    # a cached blob altered on disk afterwards is caught (its verification marker no longer matches)
    blob = H.resolve_path("hf://me/bad/w.bin").resolve()
    blob.chmod(0o644)
    blob.write_bytes(os.urandom(5000))
    with pytest.raises(H.HubFileCorrupt):
        H.resolve_path("hf://me/bad/w.bin")
    assert not blob.exists()


def test_missing_and_offline_messages(fake_hub, monkeypatch):
    fake_hub.add_repo("me/run", {"a.bin": b"abc"})
    with pytest.raises(H.HubFileMissing, match=f"{fake_hub.endpoint}/me/run/resolve/main/nothere.pt"):
        H.resolve_path("hf://me/run/nothere.pt")
    with pytest.raises(H.HubFileMissing, match="not found on the Hub"):
        H.resolve_path("hf://me/absent/x.pt")
    cached = H.resolve_path("hf://me/run/a.bin")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert H.resolve_path("hf://me/run/a.bin") == cached  # offline: the cache still serves
    with pytest.raises(H.HubFileMissing) as err:
        H.resolve_path("authors/GPT-B")
    msg = str(err.value)
    assert "HF_HUB_OFFLINE is set" in msg and os.environ["HF_HUB_CACHE"] in msg
    assert f"{fake_hub.endpoint}/yexiguafu/VFMTok/resolve/main/DINOv2/GPT-B/GPT-B-300e.pt" in msg


def test_loaders_and_cli_accept_hub_references(fake_hub, fixtures_dir, tmp_path):
    from vfmtok.cli.main import app
    from vfmtok.models.gpt_io import save_gpt
    from vfmtok.models.tokenizer_io import save_tokenizer

    torch.manual_seed(0)
    tok = vfmtok.create_tokenizer("tiny", encoder_weights="random")
    gpt = vfmtok.create_gpt("GPT-tiny", vocab_size=tok.config.codebook_size, num_classes=4,
                            grid_size=tok.config.token_grid)
    torch.nn.init.normal_(gpt.output.weight, std=0.5)
    save_tokenizer(tok, tmp_path / "tok")
    save_gpt(gpt, tmp_path / "gpt")
    files = {f"tok/{p.name}": p.read_bytes() for p in (tmp_path / "tok").iterdir()}
    files.update({p.name: p.read_bytes() for p in (tmp_path / "gpt").iterdir()})
    files["authors/GPT-tiny.pt"] = (fixtures_dir / SHARED_GPT).read_bytes()
    fake_hub.add_repo("me/pair", files)

    loaded = vfmtok.load_gpt("hf://me/pair")  # whole repository = a run folder
    for key, value in gpt.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    official = vfmtok.load_gpt("hf://me/pair/authors/GPT-tiny.pt", n_head=4)
    assert official.config.dim == 64 and official.config.n_layer == 2
    tok2 = vfmtok.load_tokenizer("hf://me/pair/tok/tokenizer.safetensors", encoder_weights="random")
    images = torch.rand(2, 3, tok.config.image_size, tok.config.image_size) * 2 - 1
    with torch.no_grad():
        assert torch.equal(tok.eval().encode(images), tok2.encode(images))

    out = tmp_path / "samples"
    res = CliRunner().invoke(app, ["sample", "--ckpt", "hf://me/pair", "--tokenizer", "hf://me/pair/tok/tokenizer"
                                   ".safetensors", "-n", "2", "--out", str(out), "--image-size", "32",
                                   "--no-progress", "--device", "cpu", "--no-png"])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(app, ["sample", "--ckpt", "hf://me/pair/missing.safetensors", "--tokenizer",
                                   str(tmp_path / "tok"), "-n", "2", "--out", str(tmp_path / "s2")])
    assert res.exit_code == 2 and "me/pair/resolve/main/missing.safetensors" in res.output


def test_timm_prefix_reaches_timm_pretrained(tmp_path, monkeypatch):
    """`timm:NAME` with weights="pretrained" loads through timm's own Hub download (here: its cache, offline)."""
    import huggingface_hub.constants as hfc
    import timm
    from safetensors.torch import save_file

    from vfmtok.models.vfm import FrozenVFM

    name = "vit_small_patch14_reg4_dinov2.lvd142m"
    monkeypatch.setattr(hfc, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(hfc, "HF_HUB_OFFLINE", True)
    with pytest.raises(RuntimeError, match="not available offline"):
        FrozenVFM(f"timm:{name}", image_size=56, levels=(11,), weights="pretrained")
    torch.manual_seed(1)
    ref = timm.create_model(name, pretrained=False, img_size=518, num_classes=0)
    commit = "0" * 40
    repo = tmp_path / "hf" / f"models--timm--{name}"
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(repo / "snapshots" / commit / "model.safetensors"))
    vfm = FrozenVFM(f"timm:{name}", image_size=56, levels=(11,), weights="pretrained")
    assert vfm.name == name
    assert torch.equal(vfm.model.blocks[3].attn.qkv.weight, ref.blocks[3].attn.qkv.weight)
