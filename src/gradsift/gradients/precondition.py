"""LESS's Adam-preconditioned update direction (methods.md section 1).

A candidate's feature at a checkpoint is the direction Adam would move the weights if its next step
used that example's gradient ``g``: ``Gamma = m' / (sqrt(v') + eps)`` with ``m' = b1 m + (1 - b1) g`` and
``v' = b2 v + (1 - b2) g^2``, ``m`` and ``v`` being the checkpoint's saved Adam moments. Target features
stay plain gradients.

Gamma is not linear in ``g``, so it needs the full per-example gradient (of the whole pair, for DPO) and
can only be followed by a dense projection: :class:`PreconditionedProjector` does gradient ->
precondition -> :class:`~gradsift.gradients.projection.DenseProjector` one LoRA matrix at a time
(the map is elementwise, so per-matrix slices are exact).

Where the epsilon goes is gradsift's option ``eps_mode``: ``"outside"`` (default) is the formula above,
as methods.md writes it and as Adam applies it; ``"inside"`` is ``m' / sqrt(v' + eps)``, which is what
LESS's released code computes (with fixed b1 = 0.9, b2 = 0.999, eps = 1e-8; gradsift reads them from the
optimizer state instead).
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import torch

from gradsift.gradients.grads import LayerFactors, LoraGradients
from gradsift.gradients.projection import DenseProjector

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
        eps_mode: ``"outside"`` (``m'/(sqrt(v')+eps)``, default) or ``"inside"`` (``m'/sqrt(v'+eps)``, LESS code).
    """

    exp_avg: torch.Tensor
    exp_avg_sq: torch.Tensor
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    eps_mode: EpsMode = "outside"

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
            [B, n] ``m' / (sqrt(v') + eps)`` (or ``m' / sqrt(v' + eps)``), float32 or float64.
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
    """LESS candidate features: per LoRA matrix, per-example gradient -> Adam direction -> dense projection.

    A :class:`~gradsift.gradients.projection.Projector`, so it plugs into :meth:`LoraGradients.compute`.

    Args:
        state: Adam moments of the checkpoint (same parameter count as the projector).
        projector: The dense projector (LESS: Rademacher, k = 8192).
    """

    def __init__(self, state: AdamState, projector: DenseProjector) -> None:
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


def _read_state_dict(path: Path) -> dict[str, Any]:
    if path.is_dir():
        found = [path / name for name in ("optimizer.pt", "optimizer.bin") if (path / name).is_file()]
        if not found:
            raise FileNotFoundError(f"{path}: no optimizer.pt or optimizer.bin (was the optimizer state saved?)")
        path = found[0]
    elif not path.is_file():
        raise FileNotFoundError(f"{path}: no such optimizer state file")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as e:
        raise ValueError(f"{path}: not a plain tensor state_dict (only weights_only loading is allowed): {e}") from e
    if (
        not isinstance(sd, dict)
        or not isinstance(sd.get("state"), dict)
        or not isinstance(sd.get("param_groups"), list)
    ):
        raise ValueError(f"{path}: not an optimizer state_dict (expected keys 'state' and 'param_groups')")
    return sd


def load_adam_state(
    path: str | Path,
    lora: LoraGradients,
    optimizer_param_names: Sequence[str] | None = None,
    eps_mode: EpsMode = "outside",
) -> AdamState:
    """Read Adam moments saved by HF Trainer or ``torch.optim.Adam``/``AdamW`` and order them like `lora`.

    The file is loaded with ``torch.load(weights_only=True)``: nothing but tensors and plain containers is
    unpickled. The optimizer's parameters are matched to LoRA weights by name when the file has names
    (state keyed by name, as in LESS's ``optimizer.bin``, or torch's ``param_names`` in ``param_groups``,
    present when the optimizer was built from ``named_parameters()``), else by `optimizer_param_names`,
    else by position: the optimizer's parameters, group after group, are taken to be the LoRA weights in
    ``model.named_parameters()`` order. That is how HF Trainer builds its optimizer when only LoRA weights
    train (they all fall in its weight-decay group); every shape is checked.

    Args:
        path: ``optimizer.pt`` / ``optimizer.bin``, or a checkpoint directory holding one.
        lora: The gradient engine of the model whose features will be preconditioned.
        optimizer_param_names: Names of the optimizer's parameters in its own order (overrides the rest).
        eps_mode: See :class:`AdamState`.

    Returns:
        The moments flattened in ``lora.layers`` order, with the optimizer's betas and eps.

    Raises:
        FileNotFoundError: No optimizer state at `path`.
        ValueError: Not a weights-only Adam state_dict, or it does not match the model's LoRA weights.
    """
    path = Path(path)
    sd = _read_state_dict(path)
    state, groups = sd["state"], sd["param_groups"]
    ids = [i for g in groups for i in g.get("params", [])]
    group_of = {i: g for g in groups for i in g.get("params", [])}
    wanted = [layer.param_name for layer in lora.layers]
    if optimizer_param_names is not None:
        if len(optimizer_param_names) != len(ids):
            raise ValueError(
                f"{path}: optimizer_param_names has {len(optimizer_param_names)} names for {len(ids)} parameters"
            )
        key_of = dict(zip(optimizer_param_names, ids, strict=True))
    elif state and all(isinstance(k, str) for k in state):
        key_of = {k: k for k in state}
    elif all("param_names" in g for g in groups):
        key_of = {n: i for g in groups for n, i in zip(g["param_names"], g["params"], strict=True)}
    else:
        if len(ids) != len(wanted):
            raise ValueError(
                f"{path}: the optimizer holds {len(ids)} parameters but the model has {len(wanted)} LoRA weights, "
                "and the file has no parameter names; pass optimizer_param_names"
            )
        key_of = dict(zip(wanted, ids, strict=True))
    missing = [n for n in wanted if n not in key_of or key_of[n] not in state]
    if missing:
        raise ValueError(
            f"{path}: no Adam state for {len(missing)} LoRA weights, e.g. {missing[0]!r} (different model or adapter?)"
        )
    avgs, sqs, hyper = [], [], set()
    for layer in lora.layers:
        key = key_of[layer.param_name]
        entry = state[key]
        if not isinstance(entry, dict) or "exp_avg" not in entry or "exp_avg_sq" not in entry:
            raise ValueError(f"{path}: the state of {layer.param_name!r} has no exp_avg/exp_avg_sq: not an Adam state")
        for what in ("exp_avg", "exp_avg_sq"):
            if tuple(entry[what].shape) != layer.shape:
                raise ValueError(
                    f"{path}: {what} of {layer.param_name!r} has shape {tuple(entry[what].shape)}, the weight "
                    f"{layer.shape}: the optimizer's parameter order does not match the model"
                )
        avgs.append(entry["exp_avg"].reshape(-1).float())
        sqs.append(entry["exp_avg_sq"].reshape(-1).float())
        group = group_of.get(key, groups[0] if len(groups) == 1 else None)
        if group is None or "betas" not in group or "eps" not in group:
            raise ValueError(f"{path}: no Adam betas/eps for {layer.param_name!r} in param_groups")
        hyper.add((float(group["betas"][0]), float(group["betas"][1]), float(group["eps"])))
    if len(hyper) != 1:
        raise ValueError(f"{path}: LoRA weights were trained with different Adam betas/eps: {sorted(hyper)}")
    (beta1, beta2, eps) = hyper.pop()
    return AdamState(torch.cat(avgs), torch.cat(sqs), beta1, beta2, eps, eps_mode)
