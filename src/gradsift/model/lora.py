"""LoRA adapters via peft."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# A LESS warm-up checkpoint folder holds, beside the adapter, AdamW's moments over the LoRA weights: written by
# `gradsift.training.warmup.save_optimizer_state`, read by `gradsift.gradients.precondition.load_checkpoint_optimizer`.
OPTIMIZER_TENSORS = "optimizer.safetensors"
OPTIMIZER_JSON = "optimizer.json"


@dataclass
class LoraSettings:
    """LoRA configuration.

    Attributes:
        rank: LoRA rank r.
        alpha: LoRA alpha (scaling alpha / r).
        dropout: Dropout on the LoRA input (0 for feature extraction: gradients must be deterministic).
        target_modules: Names of the linear layers to adapt; ``["all-linear"]`` adapts every linear layer
            but the output head.
        layers: Decoder layers that get LoRA: None (all), ``"last:K"`` (the last K) or ``"0,5,7"`` (these
            indices). With LoRA on the last K layers only, the backward pass of a feature extraction stops at
            the first of them (the forward pass stays whole).
    """

    rank: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    layers: str | None = None

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {self.rank}")
        if self.alpha <= 0:
            raise ValueError(f"LoRA alpha must be positive, got {self.alpha}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout}")
        if not self.target_modules:
            raise ValueError("LoRA target_modules must name at least one module")
        if self.layers is not None:
            parse_layers(self.layers)

    def layer_indices(self, num_layers: int) -> list[int] | None:
        """The decoder layer indices that get LoRA in a model of `num_layers` layers (None: all)."""
        if self.layers is None:
            return None
        kind, values = parse_layers(self.layers)
        chosen = list(range(max(0, num_layers - values[0]), num_layers)) if kind == "last" else values
        if not chosen or max(chosen) >= num_layers:
            raise ValueError(
                f"LoRA layers {self.layers!r}: the model has {num_layers} decoder layers (0..{num_layers - 1})"
            )
        return chosen

    def to_peft(self, model: Any = None) -> Any:
        """The peft `LoraConfig` for `model` (needed only when `layers` is set, for its number of layers)."""
        from peft import LoraConfig

        targets: Any = "all-linear" if self.target_modules == ["all-linear"] else list(self.target_modules)
        extra: dict[str, Any] = {}
        if self.layers is not None:
            if model is None:
                raise ValueError("LoRA layers are set: the model is needed to resolve them")
            extra["layers_to_transform"] = self.layer_indices(num_decoder_layers(model))
        return LoraConfig(
            r=self.rank,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=targets,
            bias="none",
            task_type="CAUSAL_LM",
            **extra,
        )

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if d["layers"] is None:
            del d["layers"]  # all layers: the settings (and cache keys) of runs made before the option existed
        return d


def parse_layers(spec: str) -> tuple[str, list[int]]:
    """Read a LoRA layer choice: ``"last:K"`` -> ``("last", [K])``, ``"0,5,7"`` -> ``("list", [0, 5, 7])``.

    Raises:
        ValueError: On any other form, K < 1, or a negative or repeated index.
    """
    text = str(spec).strip()
    try:
        if text.startswith("last:"):
            k = int(text[5:])
            if k < 1:
                raise ValueError
            return "last", [k]
        values = [int(v) for v in text.split(",") if v.strip()]
        if not values or min(values) < 0 or len(set(values)) != len(values):
            raise ValueError
        return "list", sorted(values)
    except ValueError:
        raise ValueError(
            f"LoRA layers must be 'last:K' (K >= 1) or a comma-separated list of distinct layer indices, got {spec!r}"
        ) from None


def num_decoder_layers(model: Any) -> int:
    """Number of decoder layers of a transformers causal LM (from its config)."""
    config = getattr(model, "config", None)
    n = getattr(config, "num_hidden_layers", None)
    if not isinstance(n, int):
        raise ValueError("cannot tell the model's number of decoder layers (config.num_hidden_layers)")
    return n


def attach_lora(model: Any, settings: LoraSettings, seed: int = 0, init: str = "default") -> Any:
    """Wrap `model` in a peft LoRA model.

    Args:
        model: A transformers causal LM.
        settings: LoRA settings.
        seed: Seed for the LoRA initialisation, so features are reproducible.
        init: ``"default"`` (B = 0, the standard start: gradients w.r.t. A vanish) or ``"gaussian"``
            (both A and B random; used in tests so every LoRA gradient is non-zero).

    Returns:
        The peft model, with only the LoRA weights trainable.
    """
    import torch
    from peft import get_peft_model

    cfg = settings.to_peft(model)
    torch.manual_seed(seed)
    peft_model = get_peft_model(model, cfg)
    if init == "gaussian":
        with torch.no_grad():
            for name, p in peft_model.named_parameters():
                if "lora_" in name:
                    p.normal_(0, 0.02)
    return peft_model


def load_adapter(model: Any, adapter_dir: str | Path, trainable: bool = True) -> Any:
    """Load a saved peft adapter onto a base model."""
    from peft import PeftModel

    path = Path(adapter_dir)
    if not (path / "adapter_config.json").exists():
        raise FileNotFoundError(f"{path}: no adapter_config.json, not a peft adapter directory")
    return PeftModel.from_pretrained(model, str(path), is_trainable=trainable)


def is_peft_model(model: Any) -> bool:
    """Whether `model` is a peft wrapper (a base model with an injected adapter is not)."""
    from peft import PeftModel

    return isinstance(model, PeftModel)


def lora_to_add(model: Any, lora: LoraSettings | None) -> LoraSettings | None:
    """The LoRA settings to add to `model` before training it.

    Args:
        model: A base causal LM or a peft model.
        lora: Settings for a base model; None for the default `LoraSettings()`.

    Returns:
        `lora` (or the default) for a base model; None for a peft model, whose adapter is trained as is.

    Raises:
        ValueError: `lora` given for a model that already has an adapter.
    """
    if is_peft_model(model):
        if lora is not None:
            raise ValueError("the model already has a LoRA adapter: pass lora=None to train it, or the base model")
        return None
    return lora or LoraSettings()
