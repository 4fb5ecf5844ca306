"""Noise robustness: classic versus holomorphic EP when every relaxation is noisy (float64).

    python -m experiments.noise                     # writes docs/figures/noise-robustness.png

The net and batch of ``experiments.bias`` (a 64-32-10 smooth Hopfield net, 32 synthetic digits).
Every phase, free and nudged, relaxes with ``eqjax.solvers.Langevin`` (gradient steps of 0.5 plus
Gaussian noise of temperature ``T``, 300 steps) from a different key; the gradient of each rule is
compared with the exact, noise-free gradient (implicit differentiation). Reported: the mean relative
error over ``--keys`` keys for each ``T`` and rule, all at the same nudge radius ``--beta``.

What to expect (Laborieux & Zenke 2022): the estimate is a weighted sum over the nudged phases
whose weights sum to zero, with magnitude ``1 / (N beta)``; the noise of the ``N`` phases adds up
with variance ``~ N / (N beta)^2``, so holomorphic EP with ``N`` phases has ``2 / N`` times the
variance of centered EP (``N = 2``) at the same ``beta``, on top of its smaller bias.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402

import eqjax  # noqa: E402
from eqjax.estimators import EP, HolomorphicEP, ImplicitDiff  # noqa: E402
from eqjax.verify import compare_gradients  # noqa: E402
from experiments.common import gradient_check_problem  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TEMPERATURES = (0.0, 1e-8, 1e-7, 1e-6, 1e-5, 1e-4)


def rules(beta: float) -> dict:
    return {"P-EP": EP(beta=beta, variant="positive"), "C-EP (N=2)": EP(beta=beta, variant="centered"),
            "hEP N=4": HolomorphicEP(beta=beta, num_phases=4), "hEP N=8": HolomorphicEP(beta=beta, num_phases=8)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--keys", type=int, default=5)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "figures" / "noise-robustness.png")
    args = parser.parse_args(argv)
    model, params, x, y = gradient_check_problem(32)
    cost = eqjax.costs.squared_error()
    exact_solver = eqjax.solvers.GradientDescent(step_size=0.5, tol=1e-13, max_steps=20_000)
    exact, _ = eqjax.gradients(model, cost, exact_solver, ImplicitDiff(), params, x, y)
    errors = {name: [] for name in rules(args.beta)}
    for temperature in TEMPERATURES:
        solver = eqjax.solvers.Langevin(step_size=0.5, temperature=temperature, tol=0.0, max_steps=args.steps)
        for name, rule in rules(args.beta).items():
            trials = []
            for k in range(args.keys):
                grads, _ = eqjax.gradients(model, cost, solver, rule, params, x, y, key=jax.random.key(k))
                trials.append(float(compare_gradients(grads, exact).overall_relative_error))
            errors[name].append(float(np.mean(trials)))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    shown = np.array(TEMPERATURES[1:])
    for name, values in errors.items():
        line = ax.loglog(shown, values[1:], "o-", label=name)[0]
        ax.axhline(values[0], color=line.get_color(), ls=":", lw=1)
    ax.set_xlabel("Langevin temperature T (dotted: T = 0)")
    ax.set_ylabel("relative error of the gradient")
    ax.set_title(f"noisy relaxations, beta = {args.beta}, mean over {args.keys} keys")
    ax.legend(fontsize=8)
    fig.tight_layout()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.output, dpi=120)
    print("| rule | " + " | ".join(f"T = {t:g}" for t in TEMPERATURES) + " |")
    print("|---|" + "---|" * len(TEMPERATURES))
    for name, values in errors.items():
        print(f"| {name} | " + " | ".join(f"{v:.2g}" for v in values) + " |")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
