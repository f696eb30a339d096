"""TIF's own test (issue 5): do IF, LossDiff, IRM and the fusion predict the actual effect of training on a pair?

For a sample of pool pairs, take one plain SGD step on the LoRA weights of the warm-up checkpoint with that pair's
DPO loss alone (the same step size for every pair), measure the change of the mean DPO loss on a fixed validation
subset, restore the weights, and report the Spearman correlation of each score with the actual change.

Sign convention: influence predicts a DECREASE of the validation loss (``theta - eta g(d)`` changes the summed
validation loss by ``-eta IF(d)`` to first order), so every score is correlated with ``-delta``, the measured
decrease: a positive correlation means the score ranks helpful pairs first.

Data: HH-RLHF harmless-base test pairs, kept only if both responses fit ``--max-length`` tokens whole (so no pair
is truncated or dropped; the filter is reported), shuffled with ``--seed`` and split into pool / validation / test.

Everything is cached under ``--cache`` (default ``bench/cache/preference-influence``): the scorers' DPO runs,
features and log-probabilities (`gradsift.recipes.preference`), the exact validation gradients, and one JSONL line
per measured pair, so a rerun with the same arguments continues where it stopped. ``--train-eval`` adds DPO on the
fusion selection, on a random selection of the same size and on the full pool (the warm-up itself), each evaluated
by preference accuracy and mean margin on the test pairs.

    .venv/bin/python bench/preference_influence.py                 # pool 300 / val 50 / test 150, 64 pairs
    .venv/bin/python bench/preference_influence.py --quick         # smoke run, minutes
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gradsift.atomic import write_bytes_atomic, write_json_atomic, write_text_atomic
from gradsift.data.load import load_pairs, write_records
from gradsift.data.records import Pair, fingerprint
from gradsift.data.tokenize import bucket_batches, collate, encode_pairs
from gradsift.machine import cpu_name
from gradsift.model.load import LoadedModel, ModelSettings, load_model
from gradsift.model.lora import load_adapter
from gradsift.model.task import DPOTask, pair_logps
from gradsift.recipes.base import ScoreContext
from gradsift.recipes.preference import (
    FusionScorer,
    IRMScorer,
    LossDiffScorer,
    PreferenceOptions,
    PreferenceSteps,
    TIFScorer,
    adapter_digest,
)
from gradsift.selection.band import select_pairs
from gradsift.stats import overlap, spearman
from gradsift.training.dpo import pair_row, trl_pair_lengths

log = logging.getLogger("preference_influence")
ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "hh-rlhf" / "harmless-base" / "test.jsonl.gz"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", default=str(DATA), help="preference pairs (default: HH-RLHF harmless-base test)")
    p.add_argument("--cache", default=str(ROOT / "bench" / "cache" / "preference-influence"))
    p.add_argument("--out", default=None, help="results file (default bench/results/preference-influence-<dev>.md)")
    p.add_argument("--model", default="builtin")
    p.add_argument("--device", default="auto")
    p.add_argument("--pool", type=int, default=300)
    p.add_argument("--val", type=int, default=50)
    p.add_argument("--test", type=int, default=150)
    p.add_argument("--max-length", type=int, default=128, help="token limit; longer pairs are left out of the split")
    p.add_argument("--sample", type=int, default=64, help="pool pairs whose actual effect is measured")
    p.add_argument("--val-subset", type=int, default=16, help="validation pairs the actual change is measured on")
    p.add_argument("--step-size", type=float, default=1e-2, help="SGD step size eta on the LoRA weights")
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--band", type=float, nargs=2, default=(20.0, 80.0), metavar=("LO", "HI"))
    p.add_argument("--val-init", choices=["base", "warmup"], default="warmup", help="where theta_val starts")
    p.add_argument("--lr", type=float, default=5e-4, help="DPO learning rate of the warm-up and theta_val")
    p.add_argument("--batch", type=int, default=8, help="DPO batch size (pairs)")
    p.add_argument("--batch-tokens", type=int, default=2048, help="padded tokens per scoring batch")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (the machine is shared)")
    p.add_argument(
        "--projected", action="store_true", help="also TIF from 16 x 16 factorized projected gradient features"
    )
    p.add_argument("--train-eval", action="store_true", help="also DPO on fusion / random / full and evaluate")
    p.add_argument(
        "--compare-model",
        default=None,
        metavar="MODEL",
        help="also score the same pool with a second model (e.g. gemma3-270m) and report the overlap of the\n"
        "two fusion selections and the rank correlation of their scores",
    )
    p.add_argument("--quick", action="store_true", help="smoke run: pool 24, val 8, test 8, 6 pairs, subset 4")
    args = p.parse_args(argv)
    if args.quick:
        args.pool, args.val, args.test, args.sample, args.val_subset, args.max_length = 24, 8, 8, 6, 4, 96
    if args.sample > args.pool or args.val_subset > args.val:
        p.error("--sample must not exceed --pool and --val-subset must not exceed --val")
    return args


class Timer:
    """Seconds per stage, in order; with `record`, also the longest time each stage has taken for these settings
    (the run that computed it rather than one that read it from the cache), kept in a JSON file."""

    def __init__(self, record: Path | None = None) -> None:
        self.stages: dict[str, float] = {}
        self.record = record
        self.computed: dict[str, float] = json.loads(record.read_text()) if record and record.exists() else {}

    def steps(self, scores: dict[str, Any], prefix: str = "") -> dict[str, float]:
        """Record the scorers' shared-step times (keys ``<prefix>step:<name>``, the longest kept) and return every
        recorded one under `prefix`, those of earlier runs included (a cached step reports its reuse time)."""
        for k, v in step_times(scores).items():
            key = f"{prefix}step:{k}"
            self.computed[key] = max(self.computed.get(key, 0.0), v)
        if self.record is not None:
            write_json_atomic(self.record, self.computed)
        return {k.split(":", 1)[1]: v for k, v in self.computed.items() if k.startswith(f"{prefix}step:")}

    def stage(self, name: str, start: float) -> None:
        self.stages[name] = round(time.perf_counter() - start, 1)
        log.info("stage %s: %.1f s", name, self.stages[name])
        self.computed[name] = max(self.computed.get(name, 0.0), self.stages[name])
        if self.record is not None:
            write_json_atomic(self.record, self.computed)


def split_pairs(args: argparse.Namespace, tokenizer: Any) -> tuple[dict[str, list[Pair]], dict[str, Any]]:
    """Pool / validation / test: pairs that fit `max_length` whole (gradsift's and TRL's tokenisation), shuffled."""
    pairs = load_pairs(args.data)
    encoded, _ = encode_pairs(tokenizer, pairs, 10**9)
    fits = []
    for p, (c, r) in zip(pairs, encoded, strict=True):
        n = trl_pair_lengths(tokenizer, pair_row(tokenizer, p))
        if max(len(c), len(r)) <= args.max_length and n.prompt + max(n.chosen, n.rejected) <= args.max_length:
            fits.append(p)
    need = args.pool + args.val + args.test
    if len(fits) < need:
        raise SystemExit(f"only {len(fits)} pairs fit {args.max_length} tokens; {need} are needed")
    order = np.random.default_rng(args.seed).permutation(len(fits))
    chosen = [fits[i] for i in order[:need]]
    split = {
        "pool": chosen[: args.pool],
        "val": chosen[args.pool : args.pool + args.val],
        "test": chosen[args.pool + args.val :],
    }
    facts = {"n_file": len(pairs), "n_fit": len(fits), **{k: len(v) for k, v in split.items()}}
    return split, facts


def val_loss(model: Any, batches: list[dict[str, torch.Tensor]], beta: float) -> float:
    """Mean DPO loss over the validation subset (reference log-probs carried in each batch)."""
    task = DPOTask(beta=beta)
    total, n = 0.0, 0
    with torch.no_grad():
        for batch in batches:
            losses = task.losses(model, batch).double()
            total += float(losses.sum())
            n += losses.shape[0]
    return total / n


def pair_batches(
    lm: LoadedModel, pairs: list[Pair], max_length: int, batch_tokens: int, ref: np.ndarray | None = None
) -> list[dict[str, torch.Tensor]]:
    """Fixed batches of pairs (chosen rows, then rejected rows), with ``ref_logps`` when given ([N, 2])."""
    encoded, _ = encode_pairs(lm.tokenizer, pairs, max_length)
    out = []
    for idx in bucket_batches([2 * max(len(c), len(r)) for c, r in encoded], batch_tokens):
        items = [encoded[i][0] for i in idx] + [encoded[i][1] for i in idx]
        batch = {k: v.to(lm.device) for k, v in collate(items, lm.tokenizer.pad_token_id).items()}
        if ref is not None:
            batch["ref_logps"] = torch.tensor(np.concatenate([ref[idx, 0], ref[idx, 1]]), device=lm.device)
        out.append(batch)
    return out


def lora_params(model: Any) -> list[torch.nn.Parameter]:
    return [p for n, p in model.named_parameters() if "lora_" in n and p.requires_grad]


def flat_grad(model: Any, params: list[torch.nn.Parameter], batches: list[dict[str, torch.Tensor]], beta: float):
    """Exact (unprojected) gradient of the summed DPO loss over the batches w.r.t. the LoRA weights [P] float64,
    and the summed loss."""
    task = DPOTask(beta=beta)
    total = [torch.zeros_like(p, dtype=torch.float64) for p in params]
    loss_sum = 0.0
    for batch in batches:
        loss = task.losses(model, batch).sum()
        for t, g in zip(total, torch.autograd.grad(loss, params), strict=True):
            t += g.double()
        loss_sum += float(loss.detach())
    return torch.cat([t.flatten() for t in total]), loss_sum


def pool_context(
    args: argparse.Namespace,
    pairs: list[Pair],
    workdir: Path,
    settings: ModelSettings,
    model: LoadedModel,
    options: dict[str, Any],
) -> ScoreContext:
    """A fresh scoring context for the preference scorers on `pairs` with `model` (its copies from `settings`)."""
    return ScoreContext(
        pool=[],
        targets=[],
        pairs=pairs,
        workdir=workdir,
        seed=args.seed,
        max_length=args.max_length,
        batch_tokens=args.batch_tokens,
        load_model=lambda: load_model(settings),
        options=options,
        budget=0,
        _model=model,
    )


def run_scorers(ctx: ScoreContext, timer: Timer, prefix: str = "") -> dict[str, Any]:
    results = {}
    for name, scorer in (
        ("tif", TIFScorer),
        ("lossdiff", LossDiffScorer),
        ("irm", IRMScorer),
        ("fusion", FusionScorer),
    ):
        t = time.perf_counter()
        results[name] = scorer().score(ctx)
        timer.stage(f"{prefix}score_{name}", t)
    return results


def measure(
    args: argparse.Namespace,
    ctx: ScoreContext,
    split: dict[str, list[Pair]],
    ref_pool: np.ndarray,
    warm_dir: Path,
    timer: Timer,
    prefix: str = "",
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Actual validation-loss change after one SGD step on each sampled pair, appended to a JSONL as it goes."""
    t = time.perf_counter()
    cache = Path(args.cache)
    lm = ctx.fresh_model()
    model = load_adapter(lm.model, warm_dir, trainable=True)
    model.eval()
    lm = LoadedModel(model, lm.tokenizer, lm.source, lm.fingerprint, lm.device, lm.dtype)
    params = lora_params(model)
    subset = split["val"][: args.val_subset]

    # Reference log-probs of the validation pairs: the adapter switched off, computed once.
    def ref_of(pairs: list[Pair]) -> np.ndarray:
        encoded, _ = encode_pairs(lm.tokenizer, pairs, args.max_length)
        with model.disable_adapter():
            return pair_logps(model, encoded, lm.tokenizer.pad_token_id, args.batch_tokens)

    key = {
        "adapter": adapter_digest(warm_dir),
        "val": fingerprint(split["val"]),
        "subset": args.val_subset,
        "eta": args.step_size,
        "beta": args.beta,
        "max_length": args.max_length,
        "seed": args.seed,
    }
    tag = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    grads_path = cache / f"val-grads-{tag}.npz"
    if grads_path.exists():
        with np.load(grads_path) as z:
            g_sub, g_val, ref_val = torch.from_numpy(z["g_sub"]), torch.from_numpy(z["g_val"]), z["ref_val"]
    else:
        ref_val = ref_of(split["val"])
        g_sub, _ = flat_grad(model, params, pair_batches(lm, subset, args.max_length, 512, ref_val), args.beta)
        rest = split["val"][args.val_subset :]
        g_rest = (
            flat_grad(
                model, params, pair_batches(lm, rest, args.max_length, 512, ref_val[args.val_subset :]), args.beta
            )[0]
            if rest
            else torch.zeros_like(g_sub)
        )
        g_val = g_sub + g_rest
        buf = io.BytesIO()
        np.savez(buf, g_sub=g_sub.numpy(), g_val=g_val.numpy(), ref_val=ref_val)
        write_bytes_atomic(grads_path, buf.getvalue())
    timer.stage(f"{prefix}exact_val_grads", t)

    t = time.perf_counter()
    sub_batches = pair_batches(lm, subset, args.max_length, args.batch_tokens, ref_val[: args.val_subset])
    base_loss = val_loss(model, sub_batches, args.beta)
    rows_path = cache / f"actual-{tag}.jsonl"
    done = {}
    if rows_path.exists():
        for line in rows_path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a kill: measured again
            done[rec["row"]] = rec
    # A prefix of one permutation: a run with a smaller --sample reports on the pairs measured first.
    sample = np.random.default_rng(args.seed + 1).permutation(len(split["pool"]))[: args.sample].tolist()
    saved = [p.detach().clone() for p in params]
    log.info("validation subset loss %.6f; %d of %d pairs measured already", base_loss, len(done), len(sample))
    for k, row in enumerate(sample):
        if row in done:
            continue
        t1 = time.perf_counter()
        batch = pair_batches(lm, [split["pool"][row]], args.max_length, args.batch_tokens, ref_pool[[row]])
        g, loss = flat_grad(model, params, batch, args.beta)
        with torch.no_grad():
            offset = 0
            for p in params:
                n = p.numel()
                p.sub_(args.step_size * g[offset : offset + n].view_as(p).to(p.dtype))
                offset += n
        after = val_loss(model, sub_batches, args.beta)
        with torch.no_grad():
            for p, s in zip(params, saved, strict=True):
                p.copy_(s)
        rec = {
            "row": row,
            "id": split["pool"][row].id,
            "delta": after - base_loss,
            "predicted_delta": -args.step_size * float(g @ g_sub) / len(subset),
            "if_exact_subset": float(g @ g_sub),
            "if_exact_val": float(g @ g_val),
            "grad_norm": float(g.norm()),
            "loss": loss,
        }
        with rows_path.open("a") as f:
            f.write(json.dumps(rec) + "\n")
        done[row] = rec
        log.info(
            "pair %d/%d (row %d): delta %.3e, first-order %.3e, %.1f s",
            k + 1,
            len(sample),
            row,
            rec["delta"],
            rec["predicted_delta"],
            time.perf_counter() - t1,
        )
    timer.stage(f"{prefix}actual_changes", t)
    return [done[r] for r in sample], {"base_loss": base_loss, "rows_file": str(rows_path), "key": key}


def train_eval(
    args: argparse.Namespace,
    ctx: ScoreContext,
    split: dict[str, list[Pair]],
    fusion_rows: list[int],
    warm_dir: Path,
    warm_seconds: float | None,
    timer: Timer,
) -> dict[str, Any]:
    """DPO on the fusion selection, on a random selection of the same size and on the full pool (the warm-up
    itself), each scored by preference accuracy and mean margin on the test pairs. Training and
    evaluation results are cached (``timing.json`` keeps the seconds they took)."""
    from gradsift.evaluation.loss_tasks import evaluate_preference
    from gradsift.evaluation.tasks import ScoringSettings
    from gradsift.training.dpo import train_dpo

    rng = np.random.default_rng(args.seed + 2)
    random_rows = sorted(rng.choice(len(split["pool"]), len(fusion_rows), replace=False).tolist())
    runs: dict[str, list[int] | None] = {
        "fusion": sorted(fusion_rows),
        "random": random_rows,
        "full": None,
    }
    out: dict[str, Any] = {}
    settings = ScoringSettings(max_length=args.max_length, batch_size=8)
    opts = PreferenceOptions.from_options(ctx.options)
    root = Path(args.cache) / "train-eval"
    test_tag = fingerprint(split["test"])
    for name, rows in runs.items():
        t = time.perf_counter()
        lm = ctx.fresh_model()
        if rows is None:
            model, adapter, n = load_adapter(lm.model, warm_dir, trainable=False), warm_dir, len(split["pool"])
            run_dir = root / f"full-{adapter_digest(warm_dir)}"
            timing_path = run_dir / "timing.json"
            if not timing_path.exists() and warm_seconds is not None:
                # the scorers' record of this run: the warm-up's training time only on the run that trained it
                run_dir.mkdir(parents=True, exist_ok=True)
                write_json_atomic(timing_path, {"train_s": warm_seconds})
        else:
            pairs = [split["pool"][r] for r in rows]
            run_dir = root / f"{name}-{fingerprint(pairs)}"
            timing_path = run_dir / "timing.json"
            fresh = not (run_dir / "result.json").exists()
            cfg = {
                **ctx.options["dpo_config"],
                "learning_rate": args.lr,
                "per_device_train_batch_size": args.batch,
                "max_length": args.max_length,
                "seed": args.seed,
            }
            res = train_dpo(lm.model, lm.tokenizer, pairs, run_dir, opts.lora, config=cfg, beta=args.beta)
            model, adapter, n = res.model, res.adapter_dir, len(pairs)
            if fresh:
                write_json_atomic(timing_path, {"train_s": round(time.perf_counter() - t, 1)})
        train_s = json.loads(timing_path.read_text())["train_s"] if timing_path.exists() else None
        timer.stage(f"train_{name}", t)
        t = time.perf_counter()
        eval_path = run_dir / f"eval-{test_tag}-{args.beta:g}.json"
        if eval_path.exists():
            record = json.loads(eval_path.read_text())
        else:
            result = evaluate_preference(model, lm.tokenizer, split["test"], beta=args.beta, settings=settings)
            record = {k: result["metrics"][k] for k in ("accuracy", "mean_margin", "mean_reward_margin")}
            record["eval_s"] = round(time.perf_counter() - t, 1)
            eval_path.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(eval_path, record)
        timer.stage(f"eval_{name}", t)
        out[name] = {"n_train": n, "adapter": str(adapter), "train_s": train_s, **record}
    return out


def compare_models(
    args: argparse.Namespace,
    ctx: ScoreContext,
    split: dict[str, list[Pair]],
    scores: dict[str, Any],
    rows: list[dict[str, Any]],
    timer: Timer,
) -> dict[str, Any]:
    """Score the same pool with `args.compare_model` (same options, its own warm-up and theta_val) and compare.

    Besides the scores, the second model gets the same actual-effect measurement on the same sampled pairs as the
    first (`rows`), so the report can say whether a pair that helps one model helps the other.
    """
    settings = ModelSettings(model=args.compare_model, device=args.device)
    t = time.perf_counter()
    second = load_model(settings)
    timer.stage("compare_load", t)
    tag = "".join(c if c.isalnum() or c in "-_." else "_" for c in args.compare_model)
    options = {**ctx.options, "dpo_config": dict(ctx.options["dpo_config"])}
    ctx2 = pool_context(args, split["pool"], Path(args.cache) / f"score-{tag}", settings, second, options)
    other = run_scorers(ctx2, timer, prefix=f"{tag}_")
    first, own = score_columns(scores), score_columns(other)
    rho = {k: spearman(first[k], own[k]) for k in (IF_LABEL, "LossDiff", "IRM")}
    sel = {
        "fusion": (scores["fusion"].selected or [], other["fusion"].selected or []),
        "TIF band": (scores["tif"].selected or [], other["tif"].selected or []),
    }
    n = len(split["pool"])
    overlaps = {
        k: {**overlap(a, b), "n_a": len(a), "n_b": len(b), "chance": len(a) * len(b) / n} for k, (a, b) in sel.items()
    }
    steps2 = PreferenceSteps(ctx2, PreferenceOptions.from_options(ctx2.options), "bench")
    rows2, _ = measure(args, ctx2, split, steps2.logps("reference", []), steps2.warmup, timer, prefix=f"{tag}_")
    sample = np.array([r["row"] for r in rows])
    dec1 = -np.array([r["delta"] for r in rows])
    dec2 = -np.array([r["delta"] for r in rows2])
    effects = {
        "n": len(rows),
        "rho": spearman(dec1, dec2),
        "same_sign": int(np.sum(np.sign(dec1) == np.sign(dec2))),
        "helps_first_hurts_second": int(np.sum((dec1 > 0) & (dec2 < 0))),
        "hurts_first_helps_second": int(np.sum((dec1 < 0) & (dec2 > 0))),
        "helps_first": int(np.sum(dec1 > 0)),
        "helps_second": int(np.sum(dec2 > 0)),
        # Each score against the second model's measured effect: its own, then the first model's.
        "own": {k: spearman(v[sample], dec2) for k, v in own.items()},
        "first": {k: spearman(v[sample], dec2) for k, v in first.items()},
    }
    steps = timer.steps(other, prefix=f"{tag}_")
    info = other["fusion"].info
    return {
        "effects": effects,
        "model": f"{second.source} ({second.fingerprint})",
        "rho": rho,
        "overlaps": overlaps,
        "truncated": info["truncated_by_max_length"]["pool"]["n_truncated"],
        "trl": {k: info[k]["trl_counts"] for k in ("dpo_pool", "dpo_val")},
        "steps": steps,
    }


IF_LABEL = "IF (TIF's score, exact, full V)"


def score_columns(scores: dict[str, Any]) -> dict[str, np.ndarray]:
    """The per-pair scores and band memberships compared with a measured effect, shape (n_pool,) each."""
    return {
        IF_LABEL: scores["tif"].columns["if"],
        "LossDiff": scores["lossdiff"].columns["lossdiff"],
        "IRM": scores["irm"].columns["irm"],
        "TIF band membership (0/1)": scores["tif"].columns["in_band_if"].astype(float),
        "fusion band membership (0/1)": scores["fusion"].columns["in_band"].astype(float),
    }


def effect_lines(e: dict[str, Any], first: str, args: argparse.Namespace) -> list[str]:
    """Report lines: does a pair's measured effect on one model carry over to the other?"""
    n = e["n"]
    return [
        f"### The measured effect of one step on a pair, on both models ({n} pairs)",
        "",
        f"The same {n} sampled pool pairs, the same one-pair SGD step (size {args.step_size}) from each model's own "
        f"warm-up, the same {args.val_subset} validation pairs. Spearman of the two models' measured decreases of "
        f"the validation loss: {fmt(e['rho'])}. Same sign on both models: {e['same_sign']} of {n}. A step on the "
        f"pair lowers the validation loss for {e['helps_first']} pairs on {first} and {e['helps_second']} on "
        f"{args.compare_model}; {e['helps_first_hurts_second']} pairs help the first and hurt the second, "
        f"{e['hurts_first_helps_second']} the other way round.",
        "",
        f"| score | Spearman with {args.compare_model}'s measured decrease: its own score | {first}'s score |",
        "|---|---|---|",
        *[f"| {k} | {fmt(v)} | {fmt(e['first'][k])} |" for k, v in e["own"].items()],
        "",
    ]


def step_times(scores: dict[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for s in scores.values():
        for k, v in s.info.get("timings_s", {}).items():
            out[k] = max(out.get(k, 0.0), v)
    return out


def fmt(x: Any, digits: int = 3) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float):
        return f"{x:.{digits}f}" if abs(x) >= 10**-digits or x == 0 else f"{x:.2e}"
    return str(x)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    torch.set_num_threads(args.threads)
    started = datetime.now(UTC)
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    run_key = {
        k: getattr(args, k)
        for k in ("data", "model", "pool", "val", "test", "max_length", "sample", "val_subset", "step_size")
        + ("beta", "band", "val_init", "lr", "batch", "seed")
    }
    run_tag = hashlib.sha256(json.dumps(run_key, sort_keys=True, default=list).encode()).hexdigest()[:12]
    timer = Timer(cache / f"stage-times-{run_tag}.json")

    t = time.perf_counter()
    settings = ModelSettings(model=args.model, device=args.device)
    base = load_model(settings)
    split, split_facts = split_pairs(args, base.tokenizer)
    for name, pairs in split.items():
        write_records(cache / "split" / f"{name}-{fingerprint(pairs)}.jsonl", pairs)
    timer.stage("split", t)
    log.info("split: %s", split_facts)

    dpo_config = {
        "logging_steps": 5,
        "save_steps": 10,
        "per_device_train_batch_size": args.batch,
        "learning_rate": args.lr,
    }
    if base.device.type == "cpu":
        dpo_config["use_cpu"] = True
    options = {
        "validation": split["val"],
        "beta": args.beta,
        "band_lo": args.band[0],
        "band_hi": args.band[1],
        "val_init": args.val_init,
        "dpo_config": dpo_config,
    }
    ctx = pool_context(args, split["pool"], cache / "score", settings, base, options)
    scores = run_scorers(ctx, timer)
    steps = PreferenceSteps(ctx, PreferenceOptions.from_options(ctx.options), "bench")
    warm_dir = steps.warmup
    ref_pool = steps.logps("reference", [])

    rows, measure_facts = measure(args, ctx, split, ref_pool, warm_dir, timer)
    sample = np.array([r["row"] for r in rows])
    decrease = -np.array([r["delta"] for r in rows])
    fusion, tif = scores["fusion"], scores["tif"]
    columns = {
        **score_columns(scores),
        "LossDiff band membership (0/1)": fusion.columns["in_band_lossdiff"].astype(float),
        "IRM band membership (0/1)": fusion.columns["in_band_irm"].astype(float),
    }
    exact = {
        "exact IF on the measured subset (flat gradients)": np.array([r["if_exact_subset"] for r in rows]),
        "exact IF on full V (flat gradients)": np.array([r["if_exact_val"] for r in rows]),
    }
    corr = {name: spearman(values[sample], decrease) for name, values in columns.items()}
    corr.update({name: spearman(values, decrease) for name, values in exact.items()})
    agreement = spearman(tif.columns["if"][sample], exact["exact IF on full V (flat gradients)"])
    rel_diff = float(
        np.max(np.abs(tif.columns["if"][sample] - exact["exact IF on full V (flat gradients)"]))
        / np.max(np.abs(exact["exact IF on full V (flat gradients)"]))
    )
    projected = None
    if args.projected:
        t = time.perf_counter()
        ctx.options["projector"] = "factorized"
        projected = TIFScorer().score(ctx).columns["if"]
        ctx.options.pop("projector")
        timer.stage("score_tif_factorized", t)
        corr["IF from 16 x 16 factorized projected features"] = spearman(projected[sample], decrease)
    proj_rho = spearman(projected, tif.columns["if"]) if projected is not None else None
    predicted = -np.array([r["predicted_delta"] for r in rows])
    pearson_lin = float(np.corrcoef(predicted, decrease)[0, 1]) if len(rows) > 2 else None

    n_fusion = len(fusion.selected or [])
    tif_same = select_pairs({"if": tif.columns["if"]}, n_fusion, args.band[0], args.band[1]).selected
    overlaps = {
        "fusion band vs TIF band": overlap(fusion.selected or [], tif.selected or []),
        f"fusion band vs TIF's {n_fusion} centre-most": overlap(fusion.selected or [], tif_same),
    }
    chance = n_fusion * len(tif.selected or []) / len(split["pool"])
    pool_corr = {
        "LossDiff vs IF": spearman(columns["LossDiff"], columns[IF_LABEL]),
        "IRM vs IF": spearman(columns["IRM"], columns[IF_LABEL]),
        "LossDiff vs IRM": spearman(columns["LossDiff"], columns["IRM"]),
    }
    shared_steps = timer.steps(scores)
    warm_s = shared_steps.get("dpo_pool")
    trained = train_eval(args, ctx, split, fusion.selected or [], warm_dir, warm_s, timer) if args.train_eval else None
    compared = compare_models(args, ctx, split, scores, rows, timer) if args.compare_model else None

    device = "cpu" if base.device.type == "cpu" else "gpu"
    out = Path(args.out) if args.out else ROOT / "bench" / "results" / f"preference-influence-{device}.md"
    if args.quick and not args.out:
        out = out.with_name(out.stem + "-quick.md")
    info = fusion.info  # the fusion ran every shared step (TIF included)
    lines = [
        "# Preference data selection: TIF, LossDiff, IRM and fusion against the actual effect of a training step",
        "",
        f"- Command: `{' '.join([Path(sys.executable).name, *sys.argv])}`",
        f"- Machine: {platform.platform()}, {cpu_name()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s), device {base.device}",
        f"- Date: {started.isoformat(timespec='seconds')} to {datetime.now(UTC).isoformat(timespec='seconds')}",
        f"- Model: {base.source} ({base.fingerprint}), LoRA {PreferenceOptions.from_options({}).lora.as_dict()}",
        f"- Data: `{args.data}`: {split_facts['n_file']} pairs, {split_facts['n_fit']} fit {args.max_length} tokens "
        f"whole (gradsift's and TRL's tokenisation); shuffled with seed {args.seed}: pool {len(split['pool'])}, "
        f"validation {len(split['val'])}, test {len(split['test'])}",
        f"- DPO (warm-up on the pool, theta_val on V from the {args.val_init} model): one epoch, lr {args.lr}, "
        f"batch {args.batch}, beta {args.beta}; TRL dropped {info['dpo_pool']['trl_counts']['n_dropped']} / "
        f"truncated {info['dpo_pool']['trl_counts']['n_truncated']} pool pairs and dropped "
        f"{info['dpo_val']['trl_counts']['n_dropped']} / truncated {info['dpo_val']['trl_counts']['n_truncated']} "
        f"validation pairs; gradsift's encoding truncated {info['truncated_by_max_length']['pool']['n_truncated']}",
        f"- IF: exact (each pair's full LoRA gradient against the gradient summed over all {len(split['val'])} "
        f"validation pairs, no projection); bands {args.band[0]:g}-{args.band[1]:g} percentiles",
        f"- Actual effect: for {len(rows)} pool pairs drawn with seed {args.seed + 1}, one SGD step of size "
        f"{args.step_size:g} on the LoRA weights of the warm-up checkpoint with that pair's DPO loss alone, then the "
        f"mean DPO loss on the first {args.val_subset} validation pairs (before: {measure_facts['base_loss']:.6f}); "
        f"weights restored after each pair. Per-pair rows: `{measure_facts['rows_file']}`",
        "",
        "## Spearman correlation with the measured decrease of the validation loss (-delta)",
        "",
        "Sign convention: IF predicts a decrease (`-eta IF` to first order), so a score that ranks helpful pairs "
        "first correlates positively with `-delta`.",
        "",
        "| score | Spearman with -delta |",
        "|---|---|",
        *[f"| {name} | {fmt(v)} |" for name, v in corr.items()],
        "",
        f"- Linearity check: Pearson of the first-order prediction `eta * <g(d), g(V_sub)> / |V_sub|` with the "
        f"measured decrease: {fmt(pearson_lin)}; median |delta| {np.median(np.abs(decrease)):.2e}, median "
        f"|prediction| {np.median(np.abs(predicted)):.2e}.",
        f"- Agreement check: TIF's IF (gradient factors, `DirectionSink`) against this script's own autograd IF on "
        f"full V over the sample: Spearman {fmt(agreement)}, largest difference {rel_diff:.1e} of the largest |IF|.",
        *(
            [
                f"- Projection check: Spearman of IF from 16 x 16 factorized projected features (the feature "
                f"engine's default) with the exact IF over the whole pool: {fmt(proj_rho)}."
            ]
            if projected is not None
            else []
        ),
        "",
        "## Overlap of the fusion's selection with TIF's",
        "",
        f"Bands: TIF {len(tif.selected or [])} pairs, fusion {n_fusion} pairs (LossDiff band "
        f"{fusion.info['n_in_band']['lossdiff']}, IRM band {fusion.info['n_in_band']['irm']}); two random sets of "
        f"these sizes would share {chance:.1f} pairs on average.",
        "",
        "| comparison | shared | Jaccard | share of fusion in TIF |",
        "|---|---|---|---|",
        *[f"| {k} | {v['shared']} | {fmt(v['jaccard'])} | {fmt(v['share_of_a'])} |" for k, v in overlaps.items()],
        "",
        "Rank correlations over the whole pool: " + ", ".join(f"{k} {fmt(v)}" for k, v in pool_corr.items()) + ".",
        "",
    ]
    if trained:
        lines += [
            "## DPO on the selections, evaluated on the test pairs",
            "",
            f"{len(split['test'])} test pairs; margin m = (log pi(y+) - log ref(y+)) - (log pi(y-) - log ref(y-)), "
            "reference = the adapter switched off; accuracy = share of pairs with m > 0.",
            "",
            "| training set | pairs | preference accuracy | mean margin | mean reward margin (beta m) "
            "| train s | eval s |",
            "|---|---|---|---|---|---|---|",
            *[
                f"| {k} | {v['n_train']} | {fmt(v['accuracy'])} | {fmt(v['mean_margin'])} | "
                f"{fmt(v['mean_reward_margin'])} | {fmt(v['train_s'], 1)} | {fmt(v.get('eval_s'), 1)} |"
                for k, v in trained.items()
            ],
            "",
            "The full-pool model is the warm-up itself (one epoch of DPO on the whole pool, same settings); its "
            "train time is the scorers' `dpo_pool` step. The base model has margin 0 on every pair by construction "
            "(it is its own reference), so chance level is accuracy 0.5 and margin 0.",
            "",
        ]
    if compared:
        ov = compared["overlaps"]
        lines += [
            f"## Is preference-data quality a property of the model? Same pool scored by {args.compare_model}",
            "",
            f"Second model: {compared['model']}, same pool, validation pairs, options and LoRA; its own DPO warm-up "
            f"and theta_val. Its tokenizer truncated {compared['truncated']} pool pairs at {args.max_length} tokens; "
            f"TRL dropped {compared['trl']['dpo_pool']['n_dropped']} / truncated "
            f"{compared['trl']['dpo_pool']['n_truncated']} pool pairs.",
            "",
            f"| score | Spearman, {base.source} vs {args.compare_model} |",
            "|---|---|",
            *[f"| {k} | {fmt(v)} |" for k, v in compared["rho"].items()],
            "",
            "| selection | pairs (first model) | pairs (second) | shared | Jaccard | expected shared by chance |",
            "|---|---|---|---|---|---|",
            *[
                f"| {k} | {v['n_a']} | {v['n_b']} | {v['shared']} | {fmt(v['jaccard'])} | {v['chance']:.1f} |"
                for k, v in ov.items()
            ],
            "",
            *effect_lines(compared["effects"], base.source, args),
            "Shared steps of the second model (seconds when computed): "
            + ", ".join(f"{k} {v}" for k, v in compared["steps"].items())
            + ".",
            "",
        ]
    lines += [
        "## Time per stage (seconds)",
        "",
        "`computed`: the longest time the stage took with these settings, i.e. in the run that computed it "
        f"(kept in `{timer.record}`); `this run`: the time now, short where the stage was read from the cache.",
        "",
        "| stage | computed | this run |",
        "|---|---|---|",
        *[f"| {k} | {timer.computed.get(k, v)} | {v} |" for k, v in timer.stages.items()],
        "",
        "Shared steps inside the scorers (seconds when computed, the longest of the four scorers' records): "
        + ", ".join(f"{k} {v}" for k, v in shared_steps.items())
        + ".",
        "",
    ]
    write_text_atomic(out, "\n".join(lines))
    write_json_atomic(
        cache / "last-run.json",
        {
            "args": vars(args),
            "correlations": corr,
            "overlaps": overlaps,
            "trained": trained,
            "compared": compared,
            "stages": timer.stages,
            "split": split_facts,
        },
    )
    log.info("results written to %s", out)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
