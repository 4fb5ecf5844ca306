"""Named training configurations (hyperparameters from the papers named in each comment) and how to build them."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax

import eqjax

# Each config is plain JSON-able data; `build` turns it into eqjax values. OPTIONAL entries may be
# absent (a default applies) and can still be set with `--set`.
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


COSTS = ("squared_error", "squared_error_full", "cross_entropy")
SOLVERS = ("block_coordinate", "fixed_point", "gradient_descent", "anderson", "langevin")
ESTIMATORS = ("ep", "holomorphic", "contrastive", "coupled", "implicit", "bptt")
SCHEDULES = ("exponential", "cosine")


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


# entry: (test, what it must be)
RULES = {
    "sizes": (lambda v: isinstance(v, list) and len(v) >= 2 and all(_count(n) for n in v),
              "a list of at least two positive ints"),
    "cost": (lambda v: v in COSTS, f"one of {COSTS}"),
    "solver": (lambda v: v in SOLVERS, f"one of {SOLVERS}"),
    "estimator": (lambda v: v in ESTIMATORS, f"one of {ESTIMATORS}"),
    "variant": (lambda v: v in eqjax.estimators.EP_CONTRASTS, f"one of {tuple(eqjax.estimators.EP_CONTRASTS)}"),
    "energy": (lambda v: v in eqjax.models.ENERGIES, f"one of {eqjax.models.ENERGIES}"),
    "optimizer": (lambda v: v in ("sgd", "adam"), "'sgd' or 'adam'"),
    "tol": (lambda v: _number(v) and v >= 0, "a number >= 0"),
    "step_size": (lambda v: _number(v) and v > 0, "a number > 0"),
    "history": (_count, "an int >= 1"),
    "mixing": (lambda v: _number(v) and 0 < v <= 1, "a number in (0, 1]"),
    "temperature": (lambda v: _number(v) and v >= 0, "a number >= 0"),
    "anneal": (lambda v: _number(v) and 0 < v <= 1, "a number in (0, 1]"),
    "beta": (lambda v: _number(v) and v != 0, "a finite nonzero number"),
    "eta": (lambda v: _number(v) and v != 0, "a finite nonzero number"),
    "num_phases": (lambda v: _count(v) and v >= 2, "an int >= 2"),
    "decay": (lambda v: _number(v) and 0 < v <= 1, "a number in (0, 1]"),
    "momentum": (lambda v: _number(v) and 0 <= v < 1, "a number in [0, 1)"),
    "weight_decay": (lambda v: _number(v) and v >= 0, "a number >= 0"),
    "schedule": (lambda v: v in SCHEDULES, f"one of {SCHEDULES}"),
    "conv_method": (lambda v: v in eqjax.models.conv_ops.METHODS, f"one of {eqjax.models.conv_ops.METHODS}"),
    "crop_padding": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, "an int >= 0"),
    "gain": (lambda v: _number(v) and v > 0, "a number > 0"),
    "input_gain": (lambda v: _number(v) and v > 0, "a number > 0"),
    "learning_rate": (lambda v: (_number(v) and v >= 0) or (isinstance(v, list) and v and all(_number(r) and r >= 0 for r in v)),
                      "a number >= 0 or a list of them, one per layer"),
    **{name: (_count, "an int >= 1") for name in ("batch_size", "free_steps", "nudged_steps", "eval_steps",
                                                    "check_every", "schedule_epochs")},
    **{name: (lambda v: isinstance(v, bool), "true or false") for name in ("warm_start", "persistent",
                                                                            "random_sign", "linear_output",
                                                                            "standardise", "flip")},
}


def conv_model(config: dict):
    """The :func:`eqjax.models.conv_hopfield` of a ``family="conv"`` config (``ValueError`` naming a
    bad entry): ``sizes`` lists the input features, the channels of the ``num_conv`` conv layers,
    the dense hidden layers and the outputs; the input features must be those of ``image_shape``."""
    sizes, count = config["sizes"], config["num_conv"]
    if not isinstance(count, int) or not 1 <= count <= len(sizes) - 2:
        raise ValueError(f"num_conv must be an int in [1, {len(sizes) - 2}] (sizes = {sizes}), got {count!r}")
    if sizes[0] != math.prod(config["image_shape"]):
        raise ValueError(f"sizes[0] must be the input features of image_shape {config['image_shape']}, got {sizes[0]}")
    return eqjax.models.conv_hopfield(
        tuple(config["image_shape"]), tuple(sizes[1:1 + count]), num_classes=sizes[-1],
        kernel=config["kernel"] if isinstance(config["kernel"], int) else tuple(config["kernel"]),
        padding=config["padding"] if isinstance(config["padding"], int) else tuple(config["padding"]),
        pooling=config["pooling"] if isinstance(config["pooling"], str) else tuple(config["pooling"]),
        dense=tuple(sizes[1 + count:-1]), readout=config["readout"], gain=config["gain"],
        output_bounds=(-jnp.inf, jnp.inf) if config.get("linear_output", False) else None,
        init_scheme=config.get("init_scheme", "kaiming"), conv_method=config.get("conv_method", "auto"))


def validate(config: dict) -> None:
    """``ValueError`` naming the first config entry that is not of its kind (see ``RULES``)."""
    for name, (test, what) in RULES.items():
        if name in config and not test(config[name]):
            raise ValueError(f"{name} must be {what}, got {config[name]!r}")
    if config.get("family") == "conv":
        conv_model(config)  # the architecture's entries, checked by the model's builder
    if isinstance(config.get("learning_rate"), list) and len(config["learning_rate"]) != len(config["sizes"]) - 1:
        raise ValueError(f"learning_rate needs one rate per layer ({len(config['sizes']) - 1}), got "
                         f"{config['learning_rate']}")
    if (config.get("crop_padding") or config.get("flip")) and config.get("family") != "conv":
        raise ValueError("crop_padding and flip augment images: they need a conv config (family 'conv')")
    if config.get("momentum") and config.get("optimizer") == "adam":
        raise ValueError("momentum applies to SGD; Adam keeps its own moment estimates")
    extras = [k for k in ("momentum", "weight_decay", "schedule") if k in config]
    if extras and config.get("family") == "resistive":
        raise ValueError(f"{extras} are not supported for resistive networks (plain SGD or Adam, then clipping)")
    if config.get("schedule") == "cosine" and "schedule_epochs" not in config:
        raise ValueError("schedule 'cosine' needs schedule_epochs (the epochs over which the rate decays to 0)")
    if config.get("warm_start") and config.get("persistent"):
        raise ValueError("warm_start and persistent cannot both be true")
    needed = {"langevin": ("step_size", "temperature"), "gradient_descent": ("step_size",)}.get(config.get("solver"), ())
    missing = [k for k in needed if k not in config]
    if missing:
        raise ValueError(f"solver {config['solver']!r} needs {' and '.join(missing)} (--set {missing[0]}=...)")


def build(config: dict):
    """``(model, cost, solver, estimator, optimizer)`` for a config and a number of batches per
    epoch (``config["batches_per_epoch"]``, used by the per-epoch learning-rate decay)."""
    if config.get("family") == "conv":
        model = conv_model(config)
    elif config.get("family") == "resistive":
        model = eqjax.models.resistive(tuple(config["sizes"]), input_gain=config["input_gain"],
                                       bias=config["bias"], init_scheme=config["init_scheme"])
    else:
        linear = config.get("linear_output", False)  # unbounded outputs (Scellier et al.'s DHN code)
        model = eqjax.models.hopfield(tuple(config["sizes"]), energy=config["energy"], gain=config["gain"],
                                      output_bounds=(-jnp.inf, jnp.inf) if linear else None,
                                      init_scheme=config.get("init_scheme", "glorot"))
    cost = {"squared_error": eqjax.costs.squared_error(),
            "squared_error_full": eqjax.costs.squared_error(half=False),
            "cross_entropy": eqjax.costs.cross_entropy()}[config["cost"]]
    solver = make_solver(config, config["free_steps"])
    nudged = make_solver(config, config["nudged_steps"]) if "nudged_steps" in config else None
    estimator = make_estimator(config, nudged)
    return model, cost, solver, estimator, make_optimizer(config)


def chunk_function(config: dict, model, cost, optimizer, devices=None):
    """The jitted :func:`eqjax.train_chunk` with the config's state options: ``chunk(params,
    opt_state, state, solver, estimator, xs, ys, index, keys)``. With more than one of ``devices``
    every batch is sharded over them (:func:`eqjax.parallel.sharded_train_step`).

    ``params``, ``opt_state`` and ``state`` are donated: XLA updates them in place instead of
    copying them at every call (for persistent particles the state is a 60,000-row store), so the
    caller must use the returned values, not the arguments, afterwards.
    """
    step = eqjax.parallel.sharded_train_step(model, cost, optimizer, devices) if devices and len(devices) > 1 else None
    return jax.jit(eqjax.train_chunk(
        model, cost, optimizer, warm_start=config.get("warm_start", False),
        persistent=config.get("persistent", False), random_sign=config.get("random_sign", False), step=step),
        donate_argnums=(0, 1, 2))


def initial_state(config: dict, model, num_examples: int) -> tuple:
    """Zero carried state: one row per example for persistent particles, else one batch."""
    rows = num_examples if config.get("persistent", False) else config["batch_size"]
    if config.get("family") == "conv":
        return tuple(jnp.zeros((rows, *shape), jnp.float32) for shape in model.layer_shapes)
    return tuple(jnp.zeros((rows, n), jnp.float32) for n in model.sizes[1:])


def make_estimator(config: dict, second_solver=None):
    """The config's learning rule (``estimator``, default ``"ep"``):

    - ``"ep"``: EP with ``beta`` and ``variant``; ``"holomorphic"``: holomorphic EP with radius
      ``beta`` and ``num_phases`` (default 4; needs an unbounded smooth model);
    - ``"contrastive"``: contrastive learning (output clamped to the target); ``"coupled"``:
      coupled learning with ``eta`` (default 0.5) and ``variant``;
    - baselines: ``"implicit"`` (implicit differentiation at the free equilibrium) or ``"bptt"``
      (backpropagation through the free phase's ``free_steps`` solver updates: the truncated BP of
      Scellier et al. 2024).
    """
    kind = config.get("estimator", "ep")
    if kind == "implicit":
        return eqjax.estimators.ImplicitDiff()
    if kind == "bptt":
        return eqjax.estimators.BPTT(num_steps=config["free_steps"])
    if kind == "holomorphic":
        return eqjax.estimators.HolomorphicEP(beta=config["beta"], num_phases=config.get("num_phases", 4),
                                             nudged_solver=second_solver)
    if kind == "contrastive":
        return eqjax.estimators.Contrastive(clamped_solver=second_solver)
    if kind == "coupled":
        return eqjax.estimators.Coupled(eta=config.get("eta", 0.5), variant=config["variant"],
                                        clamped_solver=second_solver)
    if kind != "ep":
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {kind!r}")
    return eqjax.estimators.EP(beta=config["beta"], variant=config["variant"], nudged_solver=second_solver)


def make_solver(config: dict, max_steps: int):
    """The config's solver with ``max_steps``; ``check_every`` (default 1) sets how often it tests
    the tolerance. ``"fixed_point"``: even/odd sweeps ``s <- clip(s - dF/ds)``; ``"anderson"``:
    Anderson acceleration of block-coordinate sweeps (``history``, default 5; ``mixing``, default 1);
    ``"langevin"``: noisy gradient steps (``step_size``, ``temperature``, ``anneal`` default 1; needs
    a PRNG key)."""
    tested = dict(tol=config["tol"], max_steps=max_steps, check_every=config.get("check_every", 1))
    if config["solver"] == "block_coordinate":
        return eqjax.solvers.BlockCoordinate(**tested)
    if config["solver"] == "fixed_point":
        return eqjax.solvers.FixedPoint(**tested)
    if config["solver"] == "anderson":
        return eqjax.solvers.Anderson(history=config.get("history", 5), mixing=config.get("mixing", 1.0), **tested)
    if config["solver"] == "langevin":
        return eqjax.solvers.Langevin(step_size=config["step_size"], temperature=config["temperature"],
                                      anneal=config.get("anneal", 1.0), **tested)
    return eqjax.solvers.GradientDescent(step_size=config["step_size"], **tested)


def make_optimizer(config: dict) -> optax.GradientTransformation:
    """SGD (Adam with ``optimizer="adam"``) with a per-epoch exponential decay (``decay``), or with
    ``schedule="cosine"`` a cosine decay to 0 over ``schedule_epochs`` (per batch, Loshchilov &
    Hutter 2017); SGD takes an optional ``momentum``, and ``weight_decay`` adds ``weight_decay *
    param`` to the gradient first (PyTorch's ``SGD(weight_decay=...)``, as in Laborieux et al.
    2021). A list of rates gives one rate per layer (the biases of layer l use the rate of the
    weights below them, as in Scellier & Bengio 2017). Resistive networks: SGD or Adam followed by
    clipping the conductances at zero."""

    def schedule(rate):
        if config.get("schedule") == "cosine":
            return optax.cosine_decay_schedule(rate, config["schedule_epochs"] * config["batches_per_epoch"])
        return optax.exponential_decay(rate, transition_steps=config["batches_per_epoch"],
                                       decay_rate=config["decay"], staircase=True)

    def sgd(rate):
        if config.get("optimizer") == "adam":
            rule = optax.adam(schedule(rate))
        else:
            rule = optax.sgd(schedule(rate), momentum=config.get("momentum") or None)
        if config.get("weight_decay"):
            return optax.chain(optax.add_decayed_weights(config["weight_decay"]), rule)
        return rule

    rates = config["learning_rate"]
    if config.get("family") == "resistive":  # conductances stay non-negative after every update
        rule = optax.adam if config.get("optimizer") == "adam" else optax.sgd
        schedule = optax.exponential_decay(rates, config["batches_per_epoch"], config["decay"], staircase=True)
        clip = optax.masked(eqjax.analog.memristors.conductance_bounds(0.0), eqjax.models.conductance_mask)
        return optax.chain(rule(schedule), clip)
    if not isinstance(rates, list):
        return sgd(rates)
    if len(rates) != len(config["sizes"]) - 1:
        raise ValueError(f"learning_rate needs one rate per layer ({len(config['sizes']) - 1}), got {rates}")
    layers = tuple(f"layer{i}" for i in range(len(rates)))
    return optax.multi_transform(
        {name: sgd(rate) for name, rate in zip(layers, rates)}, {"weights": layers, "biases": layers}
    )
