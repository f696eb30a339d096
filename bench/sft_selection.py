"""SFT selection on real data with the built-in model (gradsift issue 4, "Done when").

Pool: FLAN-CoT (all seven task files, task names kept as labels) mixed with Alpaca
(`alpagasus/data/random/random_9k.json.gz`, label ``alpaca``), at most 256 tokens each.
Part 1: 20 GSM8K test questions (with answers) as targets; less, prism, bids, embed, ifd and random
each select 5%; reported: the share of FLAN ``gsm8k`` rows among the selected vs the pool's base
rate, and the wall time of each stage.
Part 2: BIG-Bench-Hard targets from 3 tasks (10 examples each); reported: per-task best-influence
coverage of BIDS' selection vs LESS's.

Everything is cached under ``--cache`` (warm-up checkpoints, feature stores, generations): a rerun
after a kill resumes. Usage:

    python bench/sft_selection.py --shared ../shared/data --n-pool 1000 --out bench/results/sft-selection-cpu.md
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import torch

from gradsift.atomic import write_text_atomic
from gradsift.data.load import load_examples
from gradsift.data.records import Kind, fingerprint
from gradsift.data.tokenize import encode_messages
from gradsift.machine import cpu_name
from gradsift.model.load import ModelSettings, load_model
from gradsift.pipeline import SelectConfig, run_select

FLAN_TASKS = ["aqua", "creak", "ecqa", "gsm8k", "qasc", "sensemaking", "strategyqa"]
BBH_TASKS = ["boolean_expressions", "date_understanding", "logical_deduction_three_objects"]


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


def build_pool(shared: Path, n_pool: int, max_tokens: int, tokenizer, seed: int) -> list[dict]:
    """Half FLAN-CoT (equal share per task), half Alpaca; examples over `max_tokens` are skipped."""
    rng = random.Random(seed)
    flan_dir = shared / "flan-cot/flan/v2/cot_data"
    per_task = (n_pool // 2) // len(FLAN_TASKS)
    rows: list[dict] = []

    def fits(ex) -> bool:
        return len(encode_messages(tokenizer, ex.messages, 10_000).input_ids) <= max_tokens

    for task in FLAN_TASKS:
        path = next(flan_dir.glob(f"{task}_train.tsv*"))
        exs = load_examples(path, on_invalid="skip")
        rng.shuffle(exs)
        picked = [e for e in exs[: per_task * 3] if fits(e)][:per_task]
        rows += [{"messages": e.messages, "task": task} for e in picked]
    alpaca = load_examples(shared / "alpagasus/data/random/random_9k.json.gz", on_invalid="skip")
    rng.shuffle(alpaca)
    need = n_pool - len(rows)
    rows += [{"messages": e.messages, "task": "alpaca"} for e in alpaca[: need * 2] if fits(e)][:need]
    rng.shuffle(rows)
    return rows


def gsm8k_targets(shared: Path, n: int) -> list[dict]:
    exs = load_examples(shared / "gsm8k/test.jsonl", kind=Kind.TARGET)[:n]
    return [{"messages": e.messages, "task": "gsm8k"} for e in exs]


def bbh_targets(shared: Path, n: int) -> list[dict]:
    rows = []
    for task in BBH_TASKS:
        exs = load_examples(shared / f"bbh/bbh/{task}.json", kind=Kind.TARGET)[:n]
        rows += [{"messages": e.messages, "task": task} for e in exs]
    return rows


def finished(cfg: SelectConfig, pool: Path, targets: Path) -> tuple[SimpleNamespace, dict] | None:
    """A finished `run_select` output with these exact settings and data (its config.json is written last), so
    that a rerun for the report does not recompute the scores that have no cache (IFD, loss)."""
    path = Path(cfg.out) / "config.json"
    if not path.exists():
        return None
    saved = json.loads(path.read_text())
    want = json.loads(json.dumps(asdict(cfg), default=str))
    # overwrite is not a setting of the result (and config.json does not keep it)
    want.pop("overwrite")
    saved["settings"].pop("overwrite", None)
    same_data = saved["data"]["pool"]["fingerprint"] == fingerprint(load_examples(pool)) and saved["data"]["targets"][
        "fingerprint"
    ] == fingerprint(load_examples(targets, kind=Kind.TARGET))
    if saved["settings"] != want or not same_data:
        return None
    res = SimpleNamespace(out=Path(cfg.out), budget=saved["budget"], summary=saved["task_shares"])
    return res, saved


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shared", default="../shared/data")
    p.add_argument("--n-pool", type=int, default=1000)
    p.add_argument("--n-gsm8k", type=int, default=20)
    p.add_argument("--n-bbh", type=int, default=10)
    p.add_argument("--budget", default="5%")
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--warmup-epochs", type=int, default=2)
    p.add_argument("--dim", type=int, default=8192)
    p.add_argument("--methods", default="random,embed,ifd,less,bids,prism")
    p.add_argument("--cache", default="bench/cache/sft-selection")
    p.add_argument("--out", default="bench/results/sft-selection-cpu.md")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    shared, cache = Path(args.shared), Path(args.cache)
    t0 = time.perf_counter()
    tok = load_model(ModelSettings(device="cpu")).tokenizer
    pool = _write_jsonl(cache / "pool.jsonl", build_pool(shared, args.n_pool, args.max_length, tok, args.seed))
    gsm = _write_jsonl(cache / "targets-gsm8k.jsonl", gsm8k_targets(shared, args.n_gsm8k))
    bbh = _write_jsonl(cache / "targets-bbh.jsonl", bbh_targets(shared, args.n_bbh))
    t_data = time.perf_counter() - t0
    options = {"warmup": "less", "warmup_epochs": args.warmup_epochs, "dim": args.dim}
    common = dict(
        pool=str(pool),
        budget=args.budget,
        model="builtin",
        max_length=args.max_length,
        batch_tokens=4096,
        seed=args.seed,
        cache_dir=str(cache / "work"),
        options=options,
        overwrite=True,
    )
    device = "cuda" if torch.cuda.is_available() else "cpu"
    runs = {}
    reused: list[str] = []
    for name, targets, methods in [("gsm8k", gsm, args.methods.split(",")), ("bbh", bbh, ["less", "bids"])]:
        t = time.perf_counter()
        select_cfg = SelectConfig(targets=str(targets), out=str(cache / f"select-{name}"), methods=methods, **common)
        done = finished(select_cfg, pool, targets)
        if done is not None:
            res, cfg = done
            print(f"{name}: reusing the finished selection in {res.out}", file=sys.stderr, flush=True)
            runs[name] = (res, cfg, cfg["timings_s"].get("total", float("nan")))
            reused.append(name)
            continue
        res = run_select(select_cfg)
        cfg = json.loads((res.out / "config.json").read_text())
        runs[name] = (res, cfg, time.perf_counter() - t)
        print(f"{name}: done in {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)

    lines = [
        "# SFT selection on real data (gradsift issue 4)",
        "",
        f"- command: `python {' '.join(sys.argv)}`",
        f"- date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}; machine: {platform.platform()}, "
        f"{cpu_name()}, {torch.get_num_threads()} threads, device {device}, torch {torch.__version__}",
        f"- pool: {args.n_pool} examples (half FLAN-CoT, {len(FLAN_TASKS)} tasks equally; half Alpaca), "
        f"max {args.max_length} tokens; budget {args.budget}; warm-up {args.warmup_epochs} epochs on 5% "
        f"(LESS), dense projection k={args.dim} for LESS/BIDS, factorized for PRISM; built-in SmolLM2-135M-Instruct",
        f"- data preparation {t_data:.0f} s",
        "",
        f"## Part 1: {args.n_gsm8k} GSM8K test questions as targets",
        "",
        "| method | selected | FLAN gsm8k among selected | pool base rate | top other task |",
        "| --- | --- | --- | --- | --- |",
    ]
    res, cfg, _ = runs["gsm8k"]
    for m, shares in res.summary.items():
        g = shares.get("gsm8k", {"selected": 0.0, "pool": 0.0, "n_selected": 0})
        other = max(((t, s) for t, s in shares.items() if t != "gsm8k"), key=lambda kv: kv[1]["n_selected"])
        lines.append(
            f"| {m} | {res.budget} | {g['n_selected']} ({g['selected']:.0%}) | {g['pool']:.1%} | "
            f"{other[0]} {other[1]['selected']:.0%} |"
        )
    lines += ["", "Wall time of each stage (s):", "", "| stage | seconds |", "| --- | --- |"]
    # shared stages (warm-up, feature passes) are listed once; score_<method> includes the stages it ran first
    stage_times = dict(cfg["timings_s"])
    for info in cfg["methods"].values():
        stage_times.update(info.get("timings_s") or {})
    lines += [f"| {k} | {v:.1f} |" for k, v in stage_times.items()]
    res_b, cfg_b, t_b = runs["bbh"]
    lines += [
        "",
        f"## Part 2: BBH targets, {len(BBH_TASKS)} tasks x {args.n_bbh}",
        "",
        "Per-task coverage of each selection, in z-scores of the influence matrix's columns (each target's "
        "influences standardised over the pool, BIDS' normalisation), so the three tasks compare: `best` = mean over "
        "the task's targets of the best selected influence; `mean` = mean over the task's targets of the mean "
        "influence of the selected rows; `recall` = mean over the task's targets of the share of that target's "
        f"{res_b.budget} most influential candidates that are selected.",
        "",
        "| task | BIDS best | LESS best | BIDS mean | LESS mean | BIDS recall | LESS recall |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    info = cfg_b["methods"]["bids"]
    cov_b, cov_l = info["coverage"], info["coverage_less_task_max"]
    for cb, cl in zip(cov_b, cov_l, strict=True):
        lines.append(
            f"| {cb['task']} | {cb['best_influence']:.3f} | {cl['best_influence']:.3f} | "
            f"{cb['mean_influence']:.3f} | {cl['mean_influence']:.3f} | {cb['top_recall']:.1%} | "
            f"{cl['top_recall']:.1%} |"
        )

    def spread(cov: list[dict], key: str) -> float:
        return max(c[key] for c in cov) - min(c[key] for c in cov)

    lines += [
        "",
        "Balance (max minus min over the three tasks; smaller is more balanced): "
        f"mean influence BIDS {spread(cov_b, 'mean_influence'):.3f} vs LESS {spread(cov_l, 'mean_influence'):.3f}; "
        f"recall BIDS {spread(cov_b, 'top_recall'):.1%} vs LESS {spread(cov_l, 'top_recall'):.1%}. "
        f"Worst-served task's mean influence: BIDS {min(c['mean_influence'] for c in cov_b):.3f}, "
        f"LESS {min(c['mean_influence'] for c in cov_l):.3f}. Share of targets whose single best candidate is "
        "selected: "
        + ", ".join(
            f"{cb['task']} BIDS {cb['covered']:.0%} / LESS {cl['covered']:.0%}"
            for cb, cl in zip(cov_b, cov_l, strict=True)
        )
        + ".",
    ]
    lines += [
        "",
        "Selected rows per pool task:",
        "",
        "| method | " + " | ".join(sorted(res_b.summary["bids"])) + " |",
        "| --- |" + " --- |" * len(res_b.summary["bids"]),
    ]
    for m in ("less", "bids"):
        sh = res_b.summary[m]
        lines.append(f"| {m} | " + " | ".join(str(sh[t]["n_selected"]) for t in sorted(sh)) + " |")
    lines += ["", f"Part 2 wall time {t_b:.0f} s (features shared with part 1 where the checkpoints match)."]
    if reused:
        lines += [
            "",
            f"Read from finished selections with the same settings and data (their config.json, written when they "
            f"were computed; times above are those of that run): {', '.join(reused)}.",
        ]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
