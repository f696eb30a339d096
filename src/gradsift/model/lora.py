"""LoRA adapters via peft."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class LoraSettings:
    """LoRA configuration.

    Attributes:
        rank: LoRA rank r.
        alpha: LoRA alpha (scaling alpha / r).
        dropout: Dropout on the LoRA input (0 for feature extraction: gradients must be deterministic).
        target_modules: Names of the linear layers to adapt; ``["all-linear"]`` adapts every linear layer
            but the output head.
    """

    rank: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {self.rank}")
        if self.alpha <= 0:
            raise ValueError(f"LoRA alpha must be positive, got {self.alpha}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout}")
        if not self.target_modules:
            raise ValueError("LoRA target_modules must name at least one module")

    def to_peft(self) -> Any:
        from peft import LoraConfig

        targets: Any = "all-linear" if self.target_modules == ["all-linear"] else list(self.target_modules)
        return LoraConfig(
            r=self.rank,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=targets,
            bias="none",
            task_type="CAUSAL_LM",
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


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

    cfg = settings.to_peft()
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
