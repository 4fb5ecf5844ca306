"""Named training configurations (hyperparameters from the papers named in each comment) and how to build them."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax

import eqjax
from experiments.run_config import ESTIMATORS, RunConfig

# Each config is plain JSON-able data, read into a typed RunConfig (experiments/run_config.py, where
# every entry's kind and default is declared); `build` turns that into eqjax values. OPTIONAL entries
# may be absent from a named config (their default applies) and can still be set with `--set`.
OPTIONAL = ("estimator", "eta", "num_phases", "init_scheme", "linear_output", "nudged_steps", "eval_steps",
            "warm_start", "persistent", "random_sign", "check_every", "history", "mixing", "temperature",
            "anneal", "step_size", "standardise", "crop_padding", "flip", "momentum", "weight_decay",
            "schedule", "schedule_epochs", "conv_method")
CONFIGS = {
    # Scellier et al. 2023/2024 deep Hopfield networks, with the settings of their code: hard-
    # sigmoid hidden units in [0, 1], linear output units, weights U(-a, a) with a = 0.7/sqrt(fan_in)
    # ("kaiming"), zero biases, centered EP beta = 0.2, block-coordinate relaxation, batch 16, SGD with
    # 0.99 decay per epoch, warm start from the previous batch. DHN-1H: at most 15 steps, the
    # tolerance tested after steps 5, 10 and 15 (see eqjax.loop.iterate), rate 0.05;
    # DHN-2H: 50 free / 20 nudged steps, per-layer rates; DHN-3H: 100 / 10.
    "dhn-1h": dict(sizes=[784, 1024, 10], energy="bilinear", gain=0.7, init_scheme="kaiming",
                   linear_output=True, cost="squared_error", solver="block_coordinate", tol=1e-4,
                   free_steps=15, check_every=5, beta=0.2, variant="centered", batch_size=16,
                   learning_rate=0.05, decay=0.99, warm_start=True),
    "dhn-2h": dict(sizes=[784, 1024, 1024, 10], energy="bilinear", gain=0.7, init_scheme="kaiming",
                   linear_output=True, cost="squared_error", solver="block_coordinate", tol=1e-4,
                   free_steps=50, nudged_steps=20, beta=0.2, variant="centered", batch_size=16,
                   learning_rate=[0.2, 0.05, 0.01], decay=0.99, warm_start=True),
    "dhn-3h": dict(sizes=[784, 1024, 1024, 1024, 10], energy="bilinear", gain=0.7,
                   init_scheme="kaiming", linear_output=True, cost="squared_error",
                   solver="block_coordinate", tol=1e-4, free_steps=100, nudged_steps=10, beta=0.2,
                   variant="centered", batch_size=16, learning_rate=[0.2, 0.05, 0.01, 0.002],
                   decay=0.99, warm_start=True),
    # Scellier & Bengio 2017: hard-sigmoid Hopfield 784-500-10, cost ||o - y||^2, projected gradient
    # steps eps=0.5, 20 free / 4 nudged, beta=0.5 with a random sign per batch, rates 0.1 / 0.05,
    # batch 20, persistent per-example states; evaluated from zero with 100 steps. The tolerance is
    # tested every 5th step, so the 4 nudged steps always run, as in the paper.
    "sb-500": dict(sizes=[784, 500, 10], energy="scellier-bengio", gain=1.0,
                   cost="squared_error_full", solver="gradient_descent", step_size=0.5, tol=1e-4,
                   free_steps=20, nudged_steps=4, check_every=5, eval_steps=100, beta=0.5, variant="positive",
                   random_sign=True, batch_size=20, learning_rate=[0.1, 0.05], decay=1.0,
                   warm_start=False, persistent=True),
    # Deep resistive networks (Scellier et al. 2024 and their code): inputs doubled and negated
    # times an input gain (480 V per unit for DRN-1H), ideal diodes, linear outputs, current-source
    # biases starting at 0, conductances max(0, U(-1, 1) / sqrt(fan_in)) kept non-negative, centered
    # EP beta = 1, exact coordinate descent (4 sweeps there), batch 4, SGD 0.006 with 0.99 decay.
    # Warm start from the previous batch's state during training, as there. DRN-XS (Kendall et al.
    # 2020's size; the code gives no settings for it) uses DRN-1H's except the input gain: 150
    # (3 epochs here: 480 -> 23.8%, 150 -> 4.1%, 80 -> 4.4%, 40 -> 5.1% test error).
    "drn-xs": dict(family="resistive", sizes=[784, 100, 10], input_gain=150.0, bias="current",
                   init_scheme="kaiming", cost="squared_error", solver="block_coordinate", tol=1e-4,
                   free_steps=4, beta=1.0, variant="centered", batch_size=4, optimizer="sgd",
                   learning_rate=0.006, decay=0.99, warm_start=True),
    "drn-1h": dict(family="resistive", sizes=[784, 1024, 10], input_gain=480.0, bias="current",
                   init_scheme="kaiming", cost="squared_error", solver="block_coordinate", tol=1e-4,
                   free_steps=4, beta=1.0, variant="centered", batch_size=4, optimizer="sgd",
                   learning_rate=0.006, decay=0.99, warm_start=True),
    # A small net for quick checks and tests (runs in seconds).
    "tiny": dict(sizes=[784, 32, 10], energy="bilinear", gain=0.7, cost="squared_error",
                 solver="block_coordinate", tol=1e-4, free_steps=15, beta=0.2,
                 variant="centered", batch_size=16, learning_rate=0.05, decay=0.99,
                 warm_start=True),
    # Convolutional Hopfield networks (eqjax.models.conv; sizes = input features, channels of the
    # num_conv conv layers, dense layers, outputs): hard-sigmoid units in [0, 1], 2x2 max pooling,
    # the output removed from the energy (projection readout) with a cross-entropy cost as in
    # Laborieux et al. 2021, relaxed by their even/odd fixed-point sweeps (solver "fixed_point"),
    # centered EP. (With linear outputs in the energy instead, the trained readout fed the winning
    # class back and the relaxation kept drifting: 12.1% after 3 epochs against 10.1%, RESULTS.md.)
    # conv-fmnist is sized for a 2-core CPU: 28x28 input standardised with the training pixels'
    # mean and std, 5x5 conv 32 (padding 2) -> pool 14x14, 3x3 conv 64 (padding 1) -> pool 7x7, 10
    # outputs; 15 free / 10 nudged sweeps; Adam on a cosine schedule over 9 epochs (20 epochs with
    # random flips did worse: RESULTS.md). Evaluated after the training's 15 free sweeps, as
    # Laborieux et al. 2021 evaluate after T1 (python -m experiments.eval_budget shows the error per
    # budget).
    "conv-fmnist": dict(family="conv", sizes=[784, 32, 64, 10], num_conv=2, image_shape=[28, 28, 1],
                        kernel=[5, 3], padding=[2, 1], pooling="max", readout="projection",
                        gain=1.0, init_scheme="kaiming", cost="cross_entropy", solver="fixed_point",
                        tol=1e-4, free_steps=15, nudged_steps=10, check_every=5, eval_steps=15, beta=0.5,
                        variant="centered", batch_size=32, optimizer="adam", learning_rate=1e-3, decay=1.0,
                        schedule="cosine", schedule_epochs=9, standardise=True, warm_start=False),
    # Laborieux et al. 2021's CIFAR-10 net, for an accelerator: 3x3 convs with 128, 256, 512, 512
    # channels (paddings 1, 1, 1, 0), 2x2 max pooling after each (maps 16, 8, 4, 1), the 10 outputs
    # read out of the energy with a cross-entropy cost, centered EP beta = 1 (Laborieux et al. 2021), SGD with
    # momentum 0.9, weight decay 3e-4, per-layer rates 0.25 / 0.15 / 0.1 / 0.08 / 0.05 on a cosine
    # schedule over 120 epochs, batch 128, random crops (4 pixels of padding) and flips, inputs
    # standardised per channel. Differences: their T1 = 250 / T2 = 25 synchronous steps become
    # 60 / 20 even/odd fixed-point sweeps (Scellier et al. 2023's budget for asynchronous updates),
    # and their activation clip(s / 2, 0, 1) is clip(s, 0, 1) here (the same fixed points with
    # weights scaled by 1/2). Run: make train ARGS="--model conv-cifar10 --dataset cifar10 --data-dir DIR".
    "conv-cifar10": dict(family="conv", sizes=[3072, 128, 256, 512, 512, 10], num_conv=4, image_shape=[32, 32, 3],
                         kernel=3, padding=[1, 1, 1, 0], pooling="max", readout="projection",
                         gain=1.0, init_scheme="kaiming", cost="cross_entropy", solver="fixed_point",
                         tol=1e-4, free_steps=60, nudged_steps=20, check_every=5, eval_steps=100, beta=1.0,
                         variant="centered", batch_size=128, optimizer="sgd", momentum=0.9, weight_decay=3e-4,
                         learning_rate=[0.25, 0.15, 0.1, 0.08, 0.05], schedule="cosine", schedule_epochs=120,
                         decay=1.0, standardise=True, crop_padding=4, flip=True, warm_start=False),
    # Scellier et al. 2023's deep convolutional Hopfield network (DCHN), as in their public code
    # (rain-neuromorphics/energy-based-learning, papers/ebl-algorithms/comparative-study.py): 3x3
    # convs with 128, 256, 512, 512 channels, all with padding 1, 2x2 max pooling after each (maps
    # 16, 8, 4, 2), 10 linear output units in the energy with a squared-error cost, centered EP
    # beta 0.25, 15 fixed-point sweeps per phase and 60 at evaluation, batch 128, SGD with momentum
    # 0.9, weight decay 3e-4, per-layer rates 0.0625 / 0.0375 / 0.025 / 0.02 / 0.0125 on a cosine
    # schedule over 100 epochs, weight gain 0.5. Differences: their cosine ends at 2e-6, ours at 0;
    # their gain scales their own initialisation, here the Kaiming range, and their biases start
    # random, ours at zero; the crops and flips are conv-cifar10's (their data loader was not read).
    # Linear outputs in the energy can drift (eqjax/models/conv.py); their short relaxation is part
    # of the recipe. For an accelerator.
    "dchn-cifar10": dict(family="conv", sizes=[3072, 128, 256, 512, 512, 10], num_conv=4, image_shape=[32, 32, 3],
                         kernel=3, padding=1, pooling="max", readout="hopfield", linear_output=True,
                         gain=0.5, init_scheme="kaiming", cost="squared_error", solver="fixed_point",
                         tol=1e-4, free_steps=15, nudged_steps=15, check_every=5, eval_steps=60, beta=0.25,
                         variant="centered", batch_size=128, optimizer="sgd", momentum=0.9, weight_decay=3e-4,
                         learning_rate=[0.0625, 0.0375, 0.025, 0.02, 0.0125], schedule="cosine",
                         schedule_epochs=100, decay=1.0, standardise=True, crop_padding=4, flip=True,
                         warm_start=False),
}


def named(name: str, **entries) -> RunConfig:
    """The named config ``name`` with ``entries`` replaced, as a :class:`RunConfig` (kinds checked)."""
    return RunConfig.from_dict({**CONFIGS[name], **entries})


def conv_model(config: RunConfig):
    """The :func:`eqjax.models.conv_hopfield` of a ``family="conv"`` config (``ValueError`` naming a
    bad entry): ``sizes`` lists the input features, the channels of the ``num_conv`` conv layers,
    the dense hidden layers and the outputs; the input features must be those of ``image_shape``."""
    sizes, count = config.sizes, config.num_conv
    if not 1 <= count <= len(sizes) - 2:
        raise ValueError(f"num_conv must be an int in [1, {len(sizes) - 2}] (sizes = {list(sizes)}), got {count!r}")
    if config.image_shape is None or sizes[0] != math.prod(config.image_shape):
        raise ValueError(f"sizes[0] must be the input features of image_shape {config.image_shape}, got {sizes[0]}")
    return eqjax.models.conv_hopfield(
        config.image_shape, sizes[1:1 + count], num_classes=sizes[-1], kernel=config.kernel,
        padding=config.padding, pooling=config.pooling, dense=sizes[1 + count:-1], readout=config.readout,
        gain=config.gain, output_bounds=(-jnp.inf, jnp.inf) if config.linear_output else None,
        init_scheme=config.init_scheme or "kaiming", conv_method=config.conv_method)


def cross_entry_errors(config: RunConfig) -> dict:
    """``{message: violated}`` for the rules that tie entries together."""
    needed = {"langevin": ("step_size", "temperature"), "gradient_descent": ("step_size",)}.get(config.solver, ())
    missing = [name for name in needed if getattr(config, name) is None] or ["step_size"]
    return {
        "crop_padding and flip augment images: they need a conv config (family 'conv')":
            bool(config.crop_padding or config.flip) and config.family != "conv",
        "momentum applies to SGD; Adam keeps its own moment estimates": bool(config.momentum) and config.optimizer == "adam",
        "momentum, weight_decay and schedule are not supported for resistive networks (plain SGD or Adam, then "
        "clipping)": config.family == "resistive" and bool(config.momentum or config.weight_decay or
                                                           config.schedule != "exponential"),
        "schedule 'cosine' needs schedule_epochs (the epochs over which the rate decays to 0)":
            config.schedule == "cosine" and config.schedule_epochs is None,
        "warm_start and persistent cannot both be true": config.warm_start and config.persistent,
        f"solver {config.solver!r} needs {' and '.join(missing)} (--set {missing[0]}=...)":
            any(getattr(config, name) is None for name in needed),
    }


def validate(config: RunConfig) -> None:
    """``ValueError`` naming the first problem of ``config``: an entry not of its kind
    (:meth:`RunConfig.check_kinds`), entries that do not go together, or a value that the object
    built from it refuses (the model's builder, the solver's and the estimator's ``errors()``:
    ``tol >= 0``, ``beta`` finite and nonzero, a positive step size...)."""
    config.check_kinds()
    for message, violated in cross_entry_errors(config).items():
        if violated:
            raise ValueError(message)
    _, _, solver, estimator, _ = build(config.updated(batches_per_epoch=config.batches_per_epoch or 1))
    for message, violated in {**solver.errors(), **estimator.errors()}.items():
        if bool(jnp.any(violated)):
            raise ValueError(message)


def build(config: RunConfig):
    """``(model, cost, solver, estimator, optimizer)`` of a config with its ``batches_per_epoch``
    (used by the learning-rate schedules)."""
    if config.family == "conv":
        model = conv_model(config)
    elif config.family == "resistive":
        model = eqjax.models.resistive(config.sizes, input_gain=config.input_gain, bias=config.bias,
                                       init_scheme=config.init_scheme or "kaiming")
    else:
        model = eqjax.models.hopfield(config.sizes, energy=config.energy, gain=config.gain,  # linear outputs:
                                      output_bounds=(-jnp.inf, jnp.inf) if config.linear_output else None,  # DHN code
                                      init_scheme=config.init_scheme or "glorot")
    cost = {"squared_error": eqjax.costs.squared_error(),
            "squared_error_full": eqjax.costs.squared_error(half=False),
            "cross_entropy": eqjax.costs.cross_entropy()}[config.cost]
    solver = make_solver(config, config.free_steps)
    return model, cost, solver, make_estimator(config), make_optimizer(config)


def chunk_function(config: RunConfig, model, cost, optimizer, devices=None):
    """The jitted :func:`eqjax.train_chunk` with the config's state options: ``chunk(params,
    opt_state, state, solver, estimator, xs, ys, index, keys)``. With more than one of ``devices``
    every batch is sharded over them (:func:`eqjax.parallel.sharded_train_step`).

    ``params``, ``opt_state`` and ``state`` are donated: XLA updates them in place instead of
    copying them at every call (for persistent particles the state is a 60,000-row store), so the
    caller must use the returned values, not the arguments, afterwards.
    """
    step = eqjax.parallel.sharded_train_step(model, cost, optimizer, devices) if devices and len(devices) > 1 else None
    return jax.jit(eqjax.train_chunk(
        model, cost, optimizer, warm_start=config.warm_start, persistent=config.persistent,
        random_sign=config.random_sign, step=step),
        donate_argnums=(0, 1, 2))


def initial_state(config: RunConfig, model, num_examples: int) -> tuple:
    """Zero carried state: one row per example for persistent particles, else one batch."""
    rows = num_examples if config.persistent else config.batch_size
    if config.family == "conv":
        return tuple(jnp.zeros((rows, *shape), jnp.float32) for shape in model.layer_shapes)
    return tuple(jnp.zeros((rows, n), jnp.float32) for n in model.sizes[1:])


def make_estimator(config: RunConfig):
    """The config's learning rule (``estimator``, default ``"ep"``):

    - ``"ep"``: EP with ``beta`` and ``variant``; ``"holomorphic"``: holomorphic EP with radius
      ``beta`` and ``num_phases`` (default 4; needs an unbounded smooth model);
    - ``"contrastive"``: contrastive learning (output clamped to the target); ``"coupled"``:
      coupled learning with ``eta`` (default 0.5) and ``variant``;
    - baselines: ``"implicit"`` (implicit differentiation at the free equilibrium) or ``"bptt"``
      (backpropagation through the free phase's ``free_steps`` solver updates: the truncated BP of
      Scellier et al. 2024).

    The second phases run ``nudged_steps`` steps of the config's solver (its ``free_steps`` when
    the config has none).
    """
    kind = config.estimator
    if kind == "implicit":
        return eqjax.estimators.ImplicitDiff()
    if kind == "bptt":
        return eqjax.estimators.BPTT(num_steps=config.free_steps)
    if kind == "holomorphic":
        return eqjax.estimators.HolomorphicEP(beta=config.beta, num_phases=config.num_phases,
                                             nudged_steps=config.nudged_steps)
    if kind == "contrastive":
        return eqjax.estimators.Contrastive(clamped_steps=config.nudged_steps)
    if kind == "coupled":
        return eqjax.estimators.Coupled(eta=config.eta, variant=config.variant, clamped_steps=config.nudged_steps)
    if kind != "ep":
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {kind!r}")
    return eqjax.estimators.EP(beta=config.beta, variant=config.variant, nudged_steps=config.nudged_steps)


def make_solver(config: RunConfig, max_steps: int):
    """The config's solver with ``max_steps``; ``check_every`` (default 1) sets how often it tests
    the tolerance. ``"fixed_point"``: even/odd sweeps ``s <- clip(s - dF/ds)``; ``"anderson"``:
    Anderson acceleration of block-coordinate sweeps (``history``, default 5; ``mixing``, default 1);
    ``"langevin"``: noisy gradient steps (``step_size``, ``temperature``, ``anneal`` default 1; needs
    a PRNG key)."""
    tested = dict(tol=config.tol, max_steps=max_steps, check_every=config.check_every)
    if config.solver == "block_coordinate":
        return eqjax.solvers.BlockCoordinate(**tested)
    if config.solver == "fixed_point":
        return eqjax.solvers.FixedPoint(**tested)
    if config.solver == "anderson":
        return eqjax.solvers.Anderson(history=config.history, mixing=config.mixing, **tested)
    if config.solver == "langevin":
        return eqjax.solvers.Langevin(step_size=config.step_size, temperature=config.temperature,
                                      anneal=config.anneal, **tested)
    return eqjax.solvers.GradientDescent(step_size=config.step_size, **tested)


def make_optimizer(config: RunConfig) -> optax.GradientTransformation:
    """SGD (Adam with ``optimizer="adam"``) with a per-epoch exponential decay (``decay``), or with
    ``schedule="cosine"`` a cosine decay to 0 over ``schedule_epochs`` (per batch, Loshchilov &
    Hutter 2017); SGD takes an optional ``momentum``, and ``weight_decay`` adds ``weight_decay *
    param`` to the gradient first (PyTorch's ``SGD(weight_decay=...)``, as in Laborieux et al.
    2021). A list of rates gives one rate per layer (the biases of layer l use the rate of the
    weights below them, as in Scellier & Bengio 2017). Resistive networks: SGD or Adam followed by
    clipping the conductances at zero."""

    def schedule(rate):
        if config.schedule == "cosine":
            return optax.cosine_decay_schedule(rate, config.schedule_epochs * config.batches_per_epoch)
        return optax.exponential_decay(rate, transition_steps=config.batches_per_epoch, decay_rate=config.decay,
                                       staircase=True)

    def sgd(rate):
        if config.optimizer == "adam":
            rule = optax.adam(schedule(rate))
        else:
            rule = optax.sgd(schedule(rate), momentum=config.momentum or None)
        if config.weight_decay:
            return optax.chain(optax.add_decayed_weights(config.weight_decay), rule)
        return rule

    rates = config.learning_rate
    if isinstance(rates, tuple) and len(rates) != len(config.sizes) - 1:
        raise ValueError(f"learning_rate needs one rate per layer ({len(config.sizes) - 1}), got {list(rates)}")
    if config.family == "resistive":  # conductances stay non-negative after every update
        rule = optax.adam if config.optimizer == "adam" else optax.sgd
        schedule = optax.exponential_decay(rates, config.batches_per_epoch, config.decay, staircase=True)
        clip = optax.masked(eqjax.analog.memristors.conductance_bounds(0.0), eqjax.models.conductance_mask)
        return optax.chain(rule(schedule), clip)
    if not isinstance(rates, tuple):
        return sgd(rates)
    layers = tuple(f"layer{i}" for i in range(len(rates)))
    return optax.multi_transform(
        {name: sgd(rate) for name, rate in zip(layers, rates)}, {"weights": layers, "biases": layers}
    )
