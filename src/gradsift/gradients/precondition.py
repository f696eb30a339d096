"""LESS's Adam-preconditioned update direction (methods.md section 1).

A candidate's feature at a checkpoint is the direction Adam would move the weights if its next step
used that example's gradient ``g``: ``Gamma = m' / (sqrt(v') + eps)`` with ``m' = b1 m + (1 - b1) g`` and
``v' = b2 v + (1 - b2) g^2``, ``m`` and ``v`` being the checkpoint's saved Adam moments. Target features
stay plain gradients.

Gamma is not linear in ``g``, so it needs the full per-example gradient (of the whole pair, for DPO) and
a projection of the flat vector: :class:`PreconditionedProjector` does gradient -> precondition ->
:class:`~gradsift.gradients.projection.SparseProjector` (default: ``s`` multiply-adds per entry) or
:class:`~gradsift.gradients.projection.DenseProjector` (LESS's Rademacher matrix) one LoRA matrix at a time
(the map is elementwise, so per-matrix slices are exact).

Where the epsilon goes is gradsift's option ``eps_mode``: ``"inside"`` (default) is ``m' / sqrt(v' + eps)``,
what LESS's released code computes (``less/data_selection/collect_grad_reps.py``, the code behind its
published numbers; fixed b1 = 0.9, b2 = 0.999, eps = 1e-8 there, read from the optimizer state here);
``"outside"`` is the formula above, as the LESS paper and methods.md write it and as Adam applies it. On a
warm-up checkpoint ``sqrt(v')`` is about 1e-7 to 1e-6, so the two differ on most coordinates.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import torch
from safetensors.torch import load_file

from gradsift.gradients.grads import LayerFactors
from gradsift.gradients.projection import DenseProjector, SparseProjector
from gradsift.model.lora import OPTIMIZER_JSON, OPTIMIZER_TENSORS

EpsMode = Literal["outside", "inside"]


@dataclass
class AdamState:
    """Saved Adam moments of the LoRA weights, flattened in :attr:`LoraGradients.layers` order.

    Attributes:
        exp_avg: [P] first moment ``m``.
        exp_avg_sq: [P] second moment ``v`` (non-negative).
        beta1: Adam's ``b1``.
        beta2: Adam's ``b2``.
        eps: Adam's epsilon.
        eps_mode: ``"inside"`` (``m'/sqrt(v'+eps)``, LESS's code, default) or ``"outside"`` (``m'/(sqrt(v')+eps)``,
            LESS's paper).
    """

    exp_avg: torch.Tensor
    exp_avg_sq: torch.Tensor
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    eps_mode: EpsMode = "inside"

    def __post_init__(self) -> None:
        if self.exp_avg.dim() != 1 or self.exp_avg.shape != self.exp_avg_sq.shape:
            raise ValueError(
                f"exp_avg and exp_avg_sq must be flat vectors of one length, got {tuple(self.exp_avg.shape)} "
                f"and {tuple(self.exp_avg_sq.shape)}"
            )
        if not (torch.isfinite(self.exp_avg).all() and torch.isfinite(self.exp_avg_sq).all()):
            raise ValueError("the Adam moments contain NaN or infinite values; the checkpoint is unusable")
        if bool((self.exp_avg_sq < 0).any()):
            raise ValueError("exp_avg_sq has negative entries: not a second moment (moments swapped?)")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ValueError(f"Adam betas must lie in [0, 1), got ({self.beta1}, {self.beta2})")
        if not self.eps > 0:
            raise ValueError(f"Adam eps must be positive, got {self.eps}")
        if self.eps_mode not in get_args(EpsMode):
            raise ValueError(f"eps_mode must be one of {get_args(EpsMode)}, got {self.eps_mode!r}")

    @property
    def num_params(self) -> int:
        return self.exp_avg.shape[0]

    def to(self, device: torch.device | str) -> AdamState:
        """The same state on `device` (move it once, before a run, rather than per batch)."""
        return AdamState(
            self.exp_avg.to(device), self.exp_avg_sq.to(device), self.beta1, self.beta2, self.eps, self.eps_mode
        )

    def describe(self) -> dict[str, Any]:
        return {
            "preconditioner": "adam",
            "beta1": self.beta1,
            "beta2": self.beta2,
            "eps": self.eps,
            "eps_mode": self.eps_mode,
            "num_params": self.num_params,
        }

    def precondition(self, grads: torch.Tensor, offset: int = 0) -> torch.Tensor:
        """Adam update direction ``Gamma`` of each row (methods.md section 1).

        Args:
            grads: [B, n] entries ``offset .. offset + n - 1`` of per-example flattened gradients.
            offset: Where the slice starts in the flat vector.

        Returns:
            [B, n] ``m' / sqrt(v' + eps)`` (or ``m' / (sqrt(v') + eps)``), float32 or float64.
        """
        if grads.dim() != 2:
            raise ValueError(f"grads must be [B, n], got shape {tuple(grads.shape)}")
        n = grads.shape[1]
        if offset < 0 or offset + n > self.num_params:
            raise ValueError(f"gradient entries [{offset}, {offset + n}) lie outside the state's {self.num_params}")
        dtype = torch.promote_types(grads.dtype, torch.float32)
        g = grads.to(dtype)
        m = self.exp_avg[offset : offset + n].to(g.device, dtype)
        v = self.exp_avg_sq[offset : offset + n].to(g.device, dtype)
        m_new = self.beta1 * m + (1 - self.beta1) * g
        v_new = self.beta2 * v + (1 - self.beta2) * g.square()
        if self.eps_mode == "inside":
            return m_new / torch.sqrt(v_new + self.eps)
        return m_new / (torch.sqrt(v_new) + self.eps)


class PreconditionedProjector:
    """LESS candidate features: per LoRA matrix, per-example gradient -> Adam direction -> flat projection.

    A :class:`~gradsift.gradients.projection.Projector`, so it plugs into :meth:`LoraGradients.compute`.

    Args:
        state: Adam moments of the checkpoint (same parameter count as the projector).
        projector: A projector of the flat gradient: sparse JL (gradsift's default) or dense (LESS: Rademacher,
            k = 8192).
    """

    def __init__(self, state: AdamState, projector: DenseProjector | SparseProjector) -> None:
        if state.num_params != projector.num_params:
            raise ValueError(
                f"the Adam state covers {state.num_params} parameters but the projector {projector.num_params}"
            )
        self.state, self.projector = state, projector

    @property
    def dim(self) -> int:
        return self.projector.dim

    @property
    def seed(self) -> int:
        return self.projector.seed

    def describe(self) -> dict[str, Any]:
        return {**self.projector.describe(), **self.state.describe()}

    def project(self, out: torch.Tensor, factors: LayerFactors) -> None:
        offset = factors.layer.offset
        gamma = self.state.precondition(factors.gradient().flatten(1), offset)
        out += self.projector.project_flat(gamma, offset)


def load_checkpoint_optimizer(path: str | Path) -> tuple[torch.Tensor, torch.Tensor, tuple[float, float], float]:
    """Read a warm-up checkpoint's Adam state, for LESS's preconditioned features (methods.md section 1).

    The files are the ones `gradsift.training.warmup.save_optimizer_state` writes: safetensors and JSON, no
    pickles.

    Args:
        path: A checkpoint folder (``epoch-k``).

    Returns:
        ``exp_avg`` [P] and ``exp_avg_sq`` [P] float32 (trainable parameters flattened in `named_parameters`
        order, as listed in ``optimizer.json``), ``betas`` and ``eps``.

    Raises:
        FileNotFoundError: The folder lacks ``optimizer.safetensors`` or ``optimizer.json``.
        ValueError: The files disagree on the number of parameters or miss a field.
    """
    path = Path(path)
    for name in (OPTIMIZER_TENSORS, OPTIMIZER_JSON):
        if not (path / name).exists():
            raise FileNotFoundError(f"{path}: no {name}, not a warm-up checkpoint")
    tensors = load_file(str(path / OPTIMIZER_TENSORS))
    meta = json.loads((path / OPTIMIZER_JSON).read_text())
    missing = [k for k in ("betas", "eps", "n_params") if k not in meta] + [
        k for k in ("exp_avg", "exp_avg_sq") if k not in tensors
    ]
    if missing:
        raise ValueError(f"{path}: optimizer state lacks {', '.join(missing)}")
    m, v = tensors["exp_avg"].float(), tensors["exp_avg_sq"].float()
    if m.ndim != 1 or m.shape != v.shape or m.numel() != meta["n_params"]:
        raise ValueError(
            f"{path}: exp_avg {tuple(m.shape)} and exp_avg_sq {tuple(v.shape)} "
            f"do not match n_params={meta['n_params']}"
        )
    b1, b2 = meta["betas"]
    return m, v, (float(b1), float(b2)), float(meta["eps"])
