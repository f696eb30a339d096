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
