"""The comparative study of energy-based learning rules (after Scellier et al. 2023): the seven
algorithms trained with the same net, data, optimiser and epochs, several seeds each.

    python -m experiments.rules --dataset mnist --epochs 5 --seeds 3
    python -m experiments.rules --dataset fashion-mnist --epochs 5 --seeds 3

| name | rule (``eqjax.estimators``) |
|---|---|
| P-EP, N-EP, C-EP | ``EP(beta, variant="positive" / "negative" / "centered")`` |
| CL | ``Contrastive()``: output clamped to the one-hot target |
| P-CpL, N-CpL, C-CpL | ``Coupled(eta, variant=...)``: output clamped to ``o +- eta (t - o)`` |

Every rule trains the config ``--model`` (default DHN-1H: 784-1024-10, bilinear, block-coordinate
relaxation, SGD 0.05 with 0.99 decay, batch 16) with its ``beta`` for EP and ``--eta`` for coupled
learning; the seeds of a rule are one vmapped sweep (``experiments.sweeping``), so the data order is
the same for all. The last ``--validation`` training examples are held out (reported, not used to
select anything). Writes ``<runs-dir>/rules-<model>-<dataset>/`` with one sweep directory per rule
family (resumable: rerunning the command continues unfinished sweeps), ``table.md`` (test error
mean and standard deviation over seeds per rule) and ``rules.png``.
"""

from __future__ import annotations

import argparse
import csv
import statistics
from pathlib import Path

from experiments import configs, runfiles, sweeping

# rule family: (overrides, grid axes besides the seed, how a result row names its rule)
VARIANTS = ["positive", "negative", "centered"]
FAMILIES = {
    "ep": ({}, {"variant": VARIANTS}, lambda row: f"{row['variant'][0].upper()}-EP"),
    "contrastive": ({"estimator": "contrastive"}, {}, lambda row: "CL"),
    "coupled": ({"estimator": "coupled"}, {"variant": VARIANTS}, lambda row: f"{row['variant'][0].upper()}-CpL"),
}
ORDER = ("P-EP", "N-EP", "C-EP", "CL", "P-CpL", "N-CpL", "C-CpL")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="dhn-1h", choices=sorted(configs.CONFIGS))
    parser.add_argument("--dataset", default="mnist", choices=("mnist", "fashion-mnist"))
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--eta", type=float, default=0.2, help="coupled learning's clamp fraction")
    parser.add_argument("--validation", type=int, default=10000)
    parser.add_argument("--train-limit", type=int, default=None)
    parser.add_argument("--test-limit", type=int, default=None)
    parser.add_argument("--runs-dir", type=Path, default=Path("runs"))
    parser.add_argument("--data-dir", type=Path, default=None)
    return parser.parse_args(argv)


def family_plan(args, family: str) -> sweeping.SweepPlan:
    """The sweep that trains one rule family for every seed."""
    overrides, grid = FAMILIES[family][:2]
    overrides = dict(overrides, **({"eta": args.eta} if family == "coupled" else {}))
    return sweeping.SweepPlan(model=args.model, grid={"seed": list(range(args.seeds)), **grid}, overrides=overrides,
                              dataset=args.dataset, epochs=args.epochs, validation=args.validation,
                              train_limit=args.train_limit, test_limit=args.test_limit)


def run_family(args, family: str, root: Path) -> Path:
    """Train (or resume) one family's sweep under ``root / family``; returns its results.csv."""
    runs, plan = root / family, family_plan(args, family)
    base = sweeping.check(plan)
    existing = sorted(runs.glob("sweep-*/sweep.json"))
    run_dir = existing[-1].parent if existing else sweeping.new_directory(plan, runs)
    if existing and sweeping.read_plan(run_dir) != plan:
        raise SystemExit(f"{run_dir} holds a sweep with other settings; give another --runs-dir")
    sweeping.execute(plan, base, run_dir, args.data_dir)
    return run_dir / "results.csv"


def summarize(rows_by_rule: dict) -> list[dict]:
    """Per rule: mean and standard deviation over seeds of the final test and validation errors (%)."""
    table = []
    for rule in ORDER:
        rows = rows_by_rule.get(rule, [])
        if not rows:
            continue
        test = [100 * float(r["test_error"]) for r in rows]
        val = [100 * float(r[max(k for k in r if k.startswith("validation_error_"))]) for r in rows]
        diverged = sum(r["diverged"] in ("True", "1", "true") for r in rows)
        table.append({"rule": rule, "seeds": len(rows), "test_mean": statistics.mean(test),
                      "test_std": statistics.stdev(test) if len(test) > 1 else 0.0,
                      "validation_mean": statistics.mean(val), "diverged": diverged, "test_all": test})
    return table


def markdown(table: list[dict], args) -> str:
    lines = [f"{args.model} on {args.dataset}, {args.epochs} epochs, eta {args.eta} (coupled), "
             f"validation {args.validation}",
             "", "| rule | seeds | test error % mean +- std | per seed | validation error % (mean) | diverged |",
             "|---|---|---|---|---|---|"]
    for r in table:
        seeds = ", ".join(f"{t:.2f}" for t in r["test_all"])
        lines.append(f"| {r['rule']} | {r['seeds']} | {r['test_mean']:.2f} +- {r['test_std']:.2f} | {seeds} | "
                     f"{r['validation_mean']:.2f} | {r['diverged']} |")
    return "\n".join(lines) + "\n"


def plot(table: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    names = [r["rule"] for r in table]
    ax.bar(names, [r["test_mean"] for r in table], yerr=[r["test_std"] for r in table], capsize=4, color="0.7")
    for i, r in enumerate(table):
        ax.plot([i] * len(r["test_all"]), r["test_all"], "k.", ms=4)
    ax.set_ylabel("test error (%)")
    ax.set_title(title)
    fig.tight_layout()
    runfiles.save_figure(fig, path)
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    root = args.runs_dir / f"rules-{args.model}-{args.dataset}"
    rows_by_rule = {}
    for family, (_, _, name) in FAMILIES.items():
        with open(run_family(args, family, root), newline="") as f:
            for row in csv.DictReader(f):
                rows_by_rule.setdefault(name(row), []).append(row)
    table = summarize(rows_by_rule)
    text = markdown(table, args)
    runfiles.atomic_write_text(root / "table.md", text)
    plot(table, root / "rules.png", f"{args.model}, {args.dataset}, {args.epochs} epochs, {args.seeds} seeds")
    print(text)
    print(f"wrote {root / 'table.md'} and {root / 'rules.png'}")


if __name__ == "__main__":
    main()
