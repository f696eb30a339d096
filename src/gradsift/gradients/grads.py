"""Per-example gradients of the LoRA weights for a whole padded batch: one forward, one backward.

For a linear layer ``y = W x`` applied at every token, the gradient of one example's loss is
``G_b = sum_t delta_{b,t} x_{b,t}^T`` with ``delta = dL/dy`` [B, T, out] and ``x`` [B, T, in]. Rows of a
batch are independent, so the gradient of ``sum_b loss_b`` w.r.t. row ``b``'s outputs is exactly the
gradient of ``loss_b``: one backward of the summed loss yields every example's ``delta``.

:class:`LoraGradients` hooks the ``lora_A`` and ``lora_B`` ``nn.Linear`` submodules of every peft LoRA layer:
forward hooks keep each one's input and output, tensor hooks on the outputs receive ``delta`` during
the single backward, and each layer's factors ``(x, delta)`` go straight to a :class:`Sink`, which turns
them into features (the flattened gradient, or a projection of it that never builds ``G_b``) and
forgets them. Memory therefore stays at what autograd holds anyway plus one layer's factors.

peft computes ``result + lora_B(lora_A(dropout(x))) * scaling``: the scaling sits outside ``lora_B``, so
the output gradient seen at ``lora_B`` already carries it and ``delta x^T`` is exactly ``dL/dW`` for both
matrices. Gradients are those of the loss at the current weights (the ``g(z; theta)`` of methods.md).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import torch
from torch import nn

Role = Literal["A", "B"]


@dataclass(frozen=True)
class LoraLinear:
    """One LoRA factor matrix (a ``lora_A`` or ``lora_B`` ``nn.Linear``) and its place in the flat gradient.

    Attributes:
        index: Position in :attr:`LoraGradients.layers`.
        name: Module path of the ``nn.Linear``, e.g. ``...layers.0.self_attn.q_proj.lora_A.default``.
        param_name: Name of its weight in ``model.named_parameters()``.
        role: ``"A"`` (down-projection, [r, in]) or ``"B"`` (up-projection, [out, r]).
        out_features: Rows of the weight.
        in_features: Columns of the weight.
        offset: Start of the row-major flattened weight in the concatenated gradient vector.
    """

    index: int
    name: str
    param_name: str
    role: Role
    out_features: int
    in_features: int
    offset: int

    @property
    def numel(self) -> int:
        return self.out_features * self.in_features

    @property
    def shape(self) -> tuple[int, int]:
        return (self.out_features, self.in_features)


@dataclass
class LayerFactors:
    """The per-example gradient of one LoRA matrix, in factored form.

    Attributes:
        layer: Which matrix.
        inputs: [G, T, in] the matrix's inputs ``x``.
        output_grads: [G, T, out] ``dL/dy`` at its outputs.

    At padding one of the two (the rank-sized one) is zeroed, so padding contributes nothing to any
    product over tokens.
    With groups (DPO pairs), the rows of a group are laid side by side along T, so ``G`` counts groups
    and summing over T gives the group's gradient.
    """

    layer: LoraLinear
    inputs: torch.Tensor
    output_grads: torch.Tensor

    def gradient(self) -> torch.Tensor:
        """Per-example weight gradient ``G_b = sum_t delta_{b,t} x_{b,t}^T`` [G, out, in]."""
        return torch.bmm(self.output_grads.transpose(1, 2), self.inputs)


class Sink(Protocol):
    """Turns each LoRA matrix's per-example gradient into features.

    ``project`` adds this layer's contribution into ``out`` [G, dim] in place; it is called once per LoRA
    matrix and batch, in backward order, while the factors are alive.
    """

    @property
    def dim(self) -> int: ...

    def project(self, out: torch.Tensor, factors: LayerFactors) -> None: ...


class FlatGradients:
    """The identity sink: each row of ``out`` becomes the full flattened LoRA gradient [G, num_params].

    Layout: the matrices in :attr:`LoraGradients.layers` order (``model.named_parameters()`` order), each
    flattened row-major, so ``out[:, layer.offset : layer.offset + layer.numel]`` is ``G_b.flatten()``.
    """

    def __init__(self, num_params: int) -> None:
        if num_params < 1:
            raise ValueError(f"num_params must be positive, got {num_params}")
        self._dim = num_params

    @property
    def dim(self) -> int:
        return self._dim

    def project(self, out: torch.Tensor, factors: LayerFactors) -> None:
        layer = factors.layer
        out[:, layer.offset : layer.offset + layer.numel] += factors.gradient().flatten(1)


class DirectionSink:
    """A gradient sink with one feature per example: the inner product of its LoRA gradient with a fixed direction.

    For LoRA matrix ``l`` with direction block ``D_l`` [out, in], ``<G_b, D_l> = sum_t delta_{b,t}^T D_l x_{b,t}``,
    computed from the factors without building ``G_b``. With the summed validation gradient as the direction the
    feature is IF(d) exactly, at the cost of one extraction pass and no projection error.

    Args:
        direction: [P] flat direction in `FlatGradients` layout, on the model's device.
        layers: The `LoraGradients.layers` it is laid out by.

    Raises:
        ValueError: The direction's size does not match the layers.
    """

    def __init__(self, direction: torch.Tensor, layers: Sequence[LoraLinear]) -> None:
        total = sum(layer.numel for layer in layers)
        if direction.dim() != 1 or direction.numel() != total:
            raise ValueError(f"direction must be [{total}] (the LoRA parameters), got {tuple(direction.shape)}")
        self._blocks = [direction[x.offset : x.offset + x.numel].view(x.out_features, x.in_features) for x in layers]

    @property
    def dim(self) -> int:
        return 1

    def project(self, out: torch.Tensor, factors: LayerFactors) -> None:
        """Add ``sum_t delta_t^T D x_t`` of one LoRA matrix into ``out[:, 0]`` ([G, 1])."""
        block = self._blocks[factors.layer.index].to(factors.inputs.dtype)
        out[:, 0] += ((factors.output_grads @ block) * factors.inputs).sum(dim=(1, 2))


@dataclass
class GradientBatch:
    """What one batch yields.

    Attributes:
        features: [G, dim] one row per example (per pair with DPO groups), in the sink's layout.
        losses: [G] each example's loss from ``task.losses`` (detached).
        bad: [G] bool, True where the loss or any feature is NaN or infinite. Such rows are returned as
            computed (non-finite), never silently zeroed: callers must drop or report them.
    """

    features: torch.Tensor
    losses: torch.Tensor
    bad: torch.Tensor


def pair_groups(num_pairs: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Groups for a DPO batch whose rows ``i`` (chosen) and ``num_pairs + i`` (rejected) are pair ``i``.

    Returns:
        [2 * num_pairs] long: ``[0, 1, ..., n-1, 0, 1, ..., n-1]``.
    """
    if num_pairs < 1:
        raise ValueError(f"num_pairs must be positive, got {num_pairs}")
    return torch.arange(num_pairs, device=device).repeat(2)


class _Grouping:
    """Lays the rows of each group side by side along the token axis, so one outer-product sum per group
    gives the group's gradient (the sum of its rows' gradients)."""

    def __init__(self, groups: torch.Tensor | None, rows: int, num_groups: int, device: torch.device) -> None:
        self.identity = groups is None
        if groups is None:
            if num_groups != rows:
                raise ValueError(
                    f"task.losses returned {num_groups} losses for a batch of {rows} rows; pass `groups` mapping "
                    "each row to its loss (for DPO batches: gradsift.gradients.grads.pair_groups(num_pairs))"
                )
            return
        if groups.dim() != 1 or groups.shape[0] != rows:
            raise ValueError(f"groups must have shape [{rows}] (one group per batch row), got {tuple(groups.shape)}")
        if groups.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"groups must be an integer tensor, got {groups.dtype}")
        groups = groups.to(device=device, dtype=torch.long)
        if rows and (int(groups.min()) < 0 or int(groups.max()) >= num_groups):
            raise ValueError(f"groups must lie in [0, {num_groups}) (one per loss returned by the task)")
        counts = torch.bincount(groups, minlength=num_groups)
        if bool((counts == 0).any()):
            empty = torch.nonzero(counts == 0).flatten().tolist()[:10]
            raise ValueError(f"groups {empty} have no rows: every loss must come from at least one batch row")
        order = torch.argsort(groups, stable=True)
        starts = torch.cumsum(counts, 0) - counts
        slot = torch.empty_like(groups)
        slot[order] = torch.arange(rows, device=device) - starts[groups[order]]
        self.groups, self.slot = groups, slot
        self.num_groups, self.width = num_groups, int(counts.max())

    def apply(self, t: torch.Tensor) -> torch.Tensor:
        """[rows, T, d] -> [G, width * T, d] (zero-filled where a group has fewer rows than the widest)."""
        if self.identity:
            return t
        rows, steps, d = t.shape
        buf = t.new_zeros(self.num_groups, self.width, steps, d)
        buf[self.groups, self.slot] = t
        return buf.view(self.num_groups, self.width * steps, d)


def _lora_linears(model: nn.Module) -> list[tuple[str, nn.Linear, Role]]:
    """Every active adapter's ``lora_A``/``lora_B`` Linear as ``(module path, module, role)``.

    Raises:
        ValueError: A layer is merged, uses a LoRA variant (DoRA, ...) or a non-Linear factor.
    """
    from peft.tuners.lora import LoraLayer

    found: list[tuple[str, nn.Linear, Role]] = []
    for path, module in model.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        if module.merged:
            raise ValueError(f"{path}: the LoRA adapter is merged into the base weights; unmerge it first")
        for adapter in module.active_adapters:
            if adapter not in module.lora_A:
                continue
            if adapter in getattr(module, "lora_variant", {}):
                raise ValueError(
                    f"{path}: adapter {adapter!r} uses a LoRA variant (e.g. DoRA); only plain LoRA is supported"
                )
            for role, holder in (("A", module.lora_A), ("B", module.lora_B)):
                linear = holder[adapter]
                if type(linear) is not nn.Linear:
                    raise ValueError(f"{path}.lora_{role}.{adapter}: {type(linear).__name__} is not an nn.Linear")
                if linear.bias is not None:
                    raise ValueError(f"{path}.lora_{role}.{adapter}: LoRA bias is not supported (use lora_bias=False)")
                found.append((f"{path}.lora_{role}.{adapter}", linear, role))  # type: ignore[arg-type]
    return found


class LoraGradients:
    """Per-example gradients w.r.t. the LoRA weights of a peft model, one forward and one backward per batch.

    Args:
        model: A peft model with plain LoRA on ``nn.Linear`` layers. Every trainable parameter must be a
            LoRA weight of an active adapter (anything else would be missing from the features).

    Attributes:
        layers: The LoRA matrices, in ``model.named_parameters()`` order, with offsets into the flat vector.
        num_params: Length of the flattened gradient (sum of ``layer.numel``).

    Raises:
        ValueError: No LoRA layer, an unsupported LoRA variant, or trainable parameters outside LoRA.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        linears = _lora_linears(model)
        if not linears:
            raise ValueError("the model has no active LoRA layer on an nn.Linear; attach an adapter first")
        param_order = {id(p): (i, n) for i, (n, p) in enumerate(model.named_parameters())}
        linears.sort(key=lambda item: param_order[id(item[1].weight)][0])
        covered = {id(m.weight) for _, m, _ in linears}
        stray = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in covered]
        if stray:
            raise ValueError(
                f"trainable parameters outside the LoRA matrices would be missing from the features: {stray[:5]}"
                + (f" and {len(stray) - 5} more" if len(stray) > 5 else "")
                + "; freeze them (only LoRA weights may require grad)"
            )
        layers, modules, offset = [], [], 0
        for i, (path, module, role) in enumerate(linears):
            out_f, in_f = module.weight.shape
            layers.append(LoraLinear(i, path, param_order[id(module.weight)][1], role, out_f, in_f, offset))
            modules.append(module)
            offset += out_f * in_f
        self.layers: tuple[LoraLinear, ...] = tuple(layers)
        self.num_params = offset
        self._modules = modules

    def compute(
        self,
        batch: Mapping[str, torch.Tensor],
        task: Any,
        sink: Sink | None = None,
        groups: torch.Tensor | None = None,
    ) -> GradientBatch:
        """Features of every example (or group) of one padded batch.

        The model runs in eval mode (dropout off, so gradients are deterministic) with the LoRA weights
        requiring grad; both are restored afterwards. Parameter ``.grad`` fields are not touched.

        Args:
            batch: ``input_ids`` [rows, T], ``attention_mask`` [rows, T] (0 at padding, either side), and
                whatever else ``task`` reads (``labels``, ``ref_logps``).
            task: Anything with ``losses(model, batch) -> [G]`` whose entry ``g`` depends only on the rows
                of group ``g`` (:class:`~gradsift.model.task.SFTTask`, :class:`~gradsift.model.task.DPOTask`).
            sink: Where each layer's factors go; default :class:`FlatGradients` (materialised [G, P]).
            groups: [rows] long, the loss each row belongs to; default one loss per row. For DPO batches use
                :func:`pair_groups`: a pair's gradient is the sum of its chosen and rejected rows'.

        Returns:
            Features [G, sink.dim], losses [G] and the mask of non-finite rows.

        Raises:
            ValueError: Malformed batch or groups, or a LoRA matrix not used exactly once in the forward.
        """
        sink = sink if sink is not None else FlatGradients(self.num_params)
        input_ids = batch["input_ids"]
        if input_ids.dim() != 2:
            raise ValueError(f"batch['input_ids'] must be [rows, T], got shape {tuple(input_ids.shape)}")
        rows, steps = input_ids.shape
        keep = batch.get("attention_mask")
        keep = torch.ones_like(input_ids, dtype=torch.bool) if keep is None else keep.bool()
        if keep.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask shape {tuple(keep.shape)} differs from input_ids {tuple(input_ids.shape)}"
            )
        keep = keep.unsqueeze(-1)
        dtype = torch.promote_types(self._modules[0].weight.dtype, torch.float32)

        records: list[list[tuple[torch.Tensor, torch.Tensor]]] = [[] for _ in self.layers]
        with self._prepared(records):
            losses = task.losses(self.model, batch)
        if losses.dim() != 1:
            raise ValueError(f"task.losses must return one loss per example, got shape {tuple(losses.shape)}")
        unused = [self.layers[i].name for i, r in enumerate(records) if len(r) != 1]
        if unused:
            counts = sorted({len(records[i]) for i, r in enumerate(records) if len(r) != 1})
            raise ValueError(
                f"every LoRA matrix must run exactly once with gradient per batch; {unused[0]} (and "
                f"{len(unused) - 1} others) ran {counts} times (adapter disabled, or a task calling the model twice?)"
            )
        grouping = _Grouping(groups, rows, losses.shape[0], input_ids.device)
        out = torch.zeros(losses.shape[0], sink.dim, dtype=dtype, device=input_ids.device)

        def shaped(t: torch.Tensor, width: int, what: str, layer: LoraLinear) -> torch.Tensor:
            if t.shape[:-1] == (rows, steps):
                return t.to(dtype)
            if t.dim() == 2 and t.shape[0] == rows * steps:
                return t.view(rows, steps, width).to(dtype)
            raise ValueError(
                f"{layer.name}: {what} has shape {tuple(t.shape)}, expected [{rows}, {steps}, {width}] "
                "(the batch's rows and tokens)"
            )

        def on_grad(layer: LoraLinear, cell: list[torch.Tensor]) -> Callable[[torch.Tensor], None]:
            def hook(grad: torch.Tensor) -> None:
                x = shaped(cell.pop(), layer.in_features, "input", layer)  # pop: free the input once used
                delta = shaped(grad, layer.out_features, "output gradient", layer)
                # Padding carries no loss and is masked from attention, so its true contribution is zero.
                # Zeroing one factor there makes that exact; the rank-sized side is the cheap one to mask.
                # A non-finite activation at padding would still show as a non-finite (flagged) row.
                if layer.in_features < layer.out_features:
                    x = torch.where(keep, x, 0)
                else:
                    delta = torch.where(keep, delta, 0)
                sink.project(out, LayerFactors(layer, grouping.apply(x), grouping.apply(delta)))

            return hook

        handles, anchors = [], []
        try:
            for layer, [(x, y)] in zip(self.layers, records, strict=True):
                handles.append(y.register_hook(on_grad(layer, [x])))
                if layer.role == "A":
                    anchors.append(y)
            records.clear()
            # Asking for d(sum loss)/d(lora_A outputs) runs the backward through every lora_B output (their
            # hooks fire) without computing any weight gradient; the returned [rows, T, r] tensors are small.
            torch.autograd.grad(losses.sum(), anchors, allow_unused=True)
        finally:
            for h in handles:
                h.remove()
        losses = losses.detach()
        bad = ~torch.isfinite(losses) | ~torch.isfinite(out).all(dim=1)
        return GradientBatch(features=out, losses=losses, bad=bad)

    @contextmanager
    def _prepared(self, records: list[list[tuple[torch.Tensor, torch.Tensor]]]) -> Iterator[None]:
        """Eval mode, LoRA weights requiring grad, and forward hooks recording each LoRA matrix's
        (input, output) when it runs with gradient; all undone on exit."""
        modes = [(m, m.training) for m in self.model.modules()]
        flags = [(m.weight, m.weight.requires_grad) for m in self._modules]

        def recorder(i: int) -> Callable[[nn.Module, tuple[Any, ...], torch.Tensor], None]:
            def hook(module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> None:
                if torch.is_grad_enabled() and output.requires_grad:
                    records[i].append((args[0].detach(), output))

            return hook

        handles = [m.register_forward_hook(recorder(i)) for i, m in enumerate(self._modules)]
        try:
            self.model.eval()
            for w, _ in flags:
                w.requires_grad_(True)
            with torch.enable_grad():
                yield
        finally:
            for h in handles:
                h.remove()
            for w, flag in flags:
                w.requires_grad_(flag)
            for m, training in modes:
                m.training = training
