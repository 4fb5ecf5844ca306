"""Bias of every learning rule against the exact gradient, over the nudge strength (float64).

    python -m experiments.bias                       # writes docs/figures/bias-vs-beta.png

One smooth Hopfield net (sigmoid units, unbounded state: every rule, holomorphic EP included,
applies) on a batch of synthetic 8x8 digits; the reference is implicit differentiation at the free
equilibrium (``eqjax.estimators.ImplicitDiff``), the relaxations are gradient descent to 1e-13.
For each rule, ``eqjax.verify.bias_curve`` gives the relative error of the gradient at each beta
(eta for coupled learning) and the fitted log-log slope. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import eqjax  # noqa: E402
from eqjax.estimators import EP, Contrastive, Coupled, HolomorphicEP  # noqa: E402
from eqjax.verify import bias_curve, compare  # noqa: E402
from experiments.common import gradient_check_problem  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RULES = {
    "P-EP": (EP(variant="positive"), "beta"), "N-EP": (EP(variant="negative"), "beta"),
    "C-EP": (EP(variant="centered"), "beta"),
    "hEP N=3": (HolomorphicEP(num_phases=3), "beta"), "hEP N=4": (HolomorphicEP(num_phases=4), "beta"),
    "P-CpL": (Coupled(variant="positive"), "eta"), "N-CpL": (Coupled(variant="negative"), "eta"),
    "C-CpL": (Coupled(variant="centered"), "eta"),
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "figures" / "bias-vs-beta.png")
    args = parser.parse_args(argv)
    model, params, x, y = gradient_check_problem(args.batch)
    cost = eqjax.costs.squared_error()
    solver = eqjax.solvers.GradientDescent(step_size=0.5, tol=1e-13, max_steps=20_000)
    betas = np.geomspace(0.5, 0.02, 6)
    curves = {name: bias_curve(model, cost, solver, params, x, y, rule, betas, field=field)
              for name, (rule, field) in RULES.items()}
    contrastive = compare(model, cost, solver, params, x, y, Contrastive())

    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for name, curve in curves.items():
        curve.plot(ax, label=name)
    ax.axhline(float(contrastive.overall_relative_error), color="k", ls="--",
               label=f"CL (no beta): {float(contrastive.overall_relative_error):.2f}")
    ax.set_xlabel("|beta| (eta for coupled learning)")
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_title("gradient error vs the exact gradient (64-32-10 smooth Hopfield)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.output, dpi=120)
    print("| rule | fitted slope | relative error at beta = " + " / ".join(f"{b:.3g}" for b in betas) + " | cosine at the smallest |")
    print("|---|---|---|---|")
    for name, curve in curves.items():
        errors = " / ".join(f"{e:.2g}" for e in curve.relative_error)
        print(f"| {name} | {curve.slope:.2f} | {errors} | {curve.cosine[-1]:.4f} |")
    print(f"| CL | - | {float(contrastive.overall_relative_error):.2g} (no nudge strength) | "
          f"{float(contrastive.overall_cosine):.4f} |")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
