"""What the programs of ``experiments/`` share, written once: a run's config from a named config
and ``--set`` overrides, its data splits and augmentation, the epochs' data order, the
evaluation's solver, the gradient-check problem of the bias and noise studies, and the options
that start several processes (``jax.distributed``).

The programs (``train``, ``sweep``, ``rules``, ``backprop``, ``eval_budget``, ``memristors``,
``bias``, ``noise``) import this module, ``configs``, ``runfiles`` and ``splits``; never each other.
"""

from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np

import eqjax
from experiments import configs
from experiments.run_config import RunConfig
from experiments.splits import load_split

DISTRIBUTED = ("coordinator", "num_processes", "process_id", "distributed", "heartbeat_seconds")


def add_distributed_options(parser):
    """The options of a program that runs on several processes (one command per host)."""
    group = parser.add_argument_group(
        "several processes (jax.distributed; one command per host, the same arguments but --process-id)")
    group.add_argument("--coordinator", metavar="HOST:PORT", help="address of process 0's coordinator")
    group.add_argument("--num-processes", type=int, help="number of processes")
    group.add_argument("--process-id", type=int, help="this process's index, 0 to num-processes - 1")
    group.add_argument("--distributed", action="store_true",
                       help="initialise from the cluster's environment (SLURM, TPU pods, ...)")
    group.add_argument("--heartbeat-seconds", type=int, default=30, help=argparse.SUPPRESS)


def start_distributed(args) -> bool:
    """``jax.distributed.initialize`` when asked (CPU collectives over gloo); returns whether this
    process writes the results (process 0 only). Must run before anything touches a JAX device.
    A process that stops makes the others stop too once its heartbeats are missing for
    ``--heartbeat-seconds`` (30; JAX's own default is 100), instead of waiting in a collective."""
    if args.coordinator or args.distributed:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        timeouts = dict(heartbeat_timeout_seconds=args.heartbeat_seconds)
        if args.coordinator:
            if args.num_processes is None or args.process_id is None:
                raise SystemExit("--coordinator needs --num-processes and --process-id")
            if not 0 <= args.process_id < args.num_processes:
                raise SystemExit(f"--process-id must be between 0 and {args.num_processes - 1}, got {args.process_id}")
            jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id, **timeouts)
        else:
            jax.distributed.initialize(**timeouts)
    return jax.process_index() == 0


JSON_HINT = "e.g. 0.1, true, [0.1, 0.05], \"centered\" or the bare word centered"


def parse_value(text: str, what: str):
    """A ``--set``/``--grid`` value: JSON, or a bare word that starts with a letter (``centered``,
    ``langevin``) taken as a string. ``SystemExit`` naming ``what`` otherwise."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        if text[:1].isalpha() and text.replace("-", "").replace("_", "").isalnum():
            return text
        raise SystemExit(f"{what}: the value must be JSON ({JSON_HINT}), got {text!r}") from None


def parse_overrides(items) -> dict:
    """``{key: value}`` from ``--set KEY=VALUE`` items (:func:`parse_value`); ``SystemExit`` for a
    malformed item."""
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set {item!r}: expected KEY=VALUE")
        overrides[key] = parse_value(value, f"--set {item}")
    return overrides


def apply_overrides(config: dict, overrides: dict, model: str) -> dict:
    """``config`` with ``overrides`` applied; ``SystemExit`` for a key that is neither in the named
    config ``model`` nor optional."""
    for key, value in overrides.items():
        if key not in config and key not in configs.OPTIONAL:
            raise SystemExit(f"--set {key}={value!r}: {model} has no entry {key!r} "
                             f"(has {sorted(config)}; optional: {sorted(configs.OPTIONAL)})")
    return {**config, **overrides}


def checked_config(entries: dict, where: str) -> RunConfig:
    """The :class:`RunConfig` of ``entries``, validated (:func:`configs.validate`); ``SystemExit``
    naming the problem, prefixed with ``where``."""
    try:
        config = RunConfig.from_dict(entries)
        configs.validate(config)
    except (ValueError, TypeError) as error:
        raise SystemExit(f"{where}: {error}") from None
    return config


def run_config(model: str, items, epochs: int, **options) -> RunConfig:
    """The named config ``model`` with the ``--set`` ``items`` (``KEY=VALUE``), the run ``options`` (``dataset``,
    ``seed``, limits...) and ``epochs``, validated (``SystemExit`` naming the problem)."""
    if model not in configs.CONFIGS:
        raise SystemExit(f"--model must be one of {sorted(configs.CONFIGS)}, got {model!r}")
    entries = apply_overrides(configs.CONFIGS[model], parse_overrides(items), model)
    entries = dict(entries, model=model, **options, epochs=epochs, jax_version=jax.__version__,
                   backend=jax.default_backend())
    return checked_config(entries, "--set")


EVAL_BATCH = 2000  # test and validation examples relaxed together (make train, eval_budget)


def eval_solver(config: RunConfig, solver):
    """The solver of test and validation evaluations: ``solver`` with the config's ``eval_steps``
    budget (the training budget when the config has none)."""
    return solver if config.eval_steps is None else solver.replace(max_steps=config.eval_steps)


def epoch_order(seed: int, epoch: int, num_examples: int, count: int) -> np.ndarray:
    """The training examples of one epoch, in order: the first ``count`` of a permutation of
    ``range(num_examples)`` drawn from NumPy's generator seeded ``[seed, epoch]`` (the same on
    every machine and every resume)."""
    return np.random.default_rng([seed, epoch]).permutation(num_examples)[:count]


def load_data(config: RunConfig, data_dir) -> dict:
    """Training, validation and test splits (``x``, ``y``, ``x_val``, ``y_val``, ``x_test``,
    ``y_test``), standardised per channel by the training images' statistics when the config says
    ``standardise``; ``SystemExit`` when they cannot make a batch."""
    x, y = load_split(config.dataset, "train", config.train_limit, data_dir)
    try:
        (x, y), (x_val, y_val) = eqjax.data.holdout(x, y, config.validation)
    except ValueError:
        raise SystemExit(f"--validation {config.validation} leaves no training example of {len(x)}") from None
    if len(x) < config.batch_size:
        raise SystemExit(f"{len(x)} training examples (--train-limit, --validation) make no batch of "
                         f"{config.batch_size}")
    x_test, y_test = load_split(config.dataset, "test", config.test_limit, data_dir)
    if config.standardise:
        mean, std = pixel_statistics(x, config.image_shape[-1] if config.image_shape else 1)
        x, x_val, x_test = ((part - mean) / std for part in (x, x_val, x_test))
    return {"x": x, "y": y, "x_val": x_val, "y_val": y_val, "x_test": x_test, "y_test": y_test}


def pixel_statistics(x, channels: int) -> tuple[jax.Array, jax.Array]:
    """Per-channel mean and standard deviation of flat images ``x`` ``(N, H * W * C)``
    (:func:`eqjax.images.channel_stats`; flat images are row-major ``(H, W, C)``, the channel is
    the fastest axis), tiled to the feature axis so that ``(x - mean) / std`` standardises every
    channel."""
    stats = eqjax.images.channel_stats(np.asarray(x).reshape(len(x), -1, 1, channels))
    return tuple(jnp.tile(jnp.asarray(s, x.dtype), x.shape[1] // channels) for s in stats)


def augmentation(config: RunConfig):
    """``augment(xs, key)`` for a chunk of batches ``xs`` ``(chunks, batch, features)``: a random
    crop after ``crop_padding`` pixels of zero padding and a random horizontal flip (``flip``) per
    image (:class:`eqjax.images.Pipeline`; the padding is applied to the inputs as stored, i.e.
    after ``standardise``). ``None`` when the config asks for neither."""
    if not config.crop_padding and not config.flip:
        return None
    pipeline = eqjax.images.Pipeline(image_shape=config.image_shape, padding=config.crop_padding, flip=config.flip)
    return jax.jit(lambda xs, key: pipeline(xs.reshape(-1, xs.shape[-1]), key).reshape(xs.shape))


def gradient_check_problem(batch: int):
    """``(model, params, x, y)``: a 64-32-10 smooth Hopfield net at initialisation, float64, on
    ``batch`` synthetic digits (the problem of the bias and noise studies)."""
    model = eqjax.models.hopfield((64, 32, 10), energy="smooth", gain=1.0)
    params = model.init(jax.random.key(0), jnp.float64)
    x, y = eqjax.synthetic.digits(jax.random.key(1), batch)
    return model, params, x.astype(jnp.float64), y
