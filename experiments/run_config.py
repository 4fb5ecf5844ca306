"""A run's configuration as one typed, frozen value: :class:`RunConfig`.

The named configs of :mod:`experiments.configs` and a run's ``config.json`` are JSON objects;
:meth:`RunConfig.from_dict` turns one into a ``RunConfig`` (unknown entries refused, absent ones
at their defaults) and :meth:`RunConfig.to_dict` back. Each field states its kind here (an int, a
number, one of some names); the limits of values that an eqjax object also checks (``tol >= 0``,
``beta != 0``, a positive step size...) are that object's ``errors()``, asked by
:func:`experiments.configs.validate` after building it, so each rule is written once.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _ints(value) -> bool:
    return isinstance(value, tuple) and all(_int(n) for n in value)


def _int_or_ints(value) -> bool:
    return _int(value) or _ints(value)


def _entry(default, test: Callable, what: str):
    """A field whose value must pass ``test`` (``what`` says what it must be)."""
    return dataclasses.field(default=default, metadata={"test": test, "what": what})


def _one_of(names: tuple) -> tuple:
    return (lambda v: v in names), "one of " + ", ".join(repr(n) for n in names)


COSTS = ("squared_error", "squared_error_full", "cross_entropy")
SOLVERS = ("block_coordinate", "fixed_point", "gradient_descent", "anderson", "langevin")
ESTIMATORS = ("ep", "holomorphic", "contrastive", "coupled", "implicit", "bptt")
_REQUIRED = object()  # the default of a field every named config sets
POSITIVE_INT = (lambda v: _int(v) and v >= 1, "an int >= 1")
OPTIONAL_POSITIVE_INT = (lambda v: v is None or (_int(v) and v >= 1), "an int >= 1")
NUMBER = (_number, "a finite number")
FLAG = (lambda v: isinstance(v, bool), "true or false")
NAME = (lambda v: isinstance(v, str), "a string")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything a training run or a sweep member needs: the network, its relaxation and learning
    rule, the optimizer and the data (one field per config entry; see ``experiments/configs.py``
    for the named configs and what the entries mean)."""

    # the network (families: dense Hopfield "hopfield", convolutional "conv", resistive "resistive")
    sizes: tuple = _entry(_REQUIRED, lambda v: _ints(v) and len(v) >= 2 and min(v) >= 1,
                          "a list of at least two positive ints")
    family: str = _entry("hopfield", *_one_of(("hopfield", "conv", "resistive")))
    energy: str = _entry("bilinear", *NAME)
    gain: float = _entry(1.0, lambda v: _number(v) and v > 0, "a number > 0")
    init_scheme: str | None = _entry(None, lambda v: v is None or isinstance(v, str), "a string")
    linear_output: bool = _entry(False, *FLAG)
    num_conv: int = _entry(0, lambda v: _int(v) and v >= 0, "an int >= 0")
    image_shape: tuple | None = _entry(None, lambda v: v is None or (_ints(v) and len(v) == 3),
                                       "[height, width, channels]")
    kernel: int | tuple = _entry(3, _int_or_ints, "an int or a list of ints")
    padding: int | tuple = _entry(0, _int_or_ints, "an int or a list of ints")
    pooling: str | tuple = _entry("max", lambda v: isinstance(v, str) or (isinstance(v, tuple) and
                                                                          all(isinstance(p, str) for p in v)),
                                  "a string or a list of strings")
    readout: str = _entry("projection", *NAME)
    conv_method: str = _entry("auto", *NAME)
    input_gain: float = _entry(1.0, lambda v: _number(v) and v > 0, "a number > 0")
    bias: str = _entry("current", *NAME)
    # the cost, the relaxation and the learning rule
    cost: str = _entry(_REQUIRED, *_one_of(COSTS))
    solver: str = _entry(_REQUIRED, *_one_of(SOLVERS))
    tol: float = _entry(_REQUIRED, *NUMBER)
    free_steps: int = _entry(_REQUIRED, *POSITIVE_INT)
    nudged_steps: int | None = _entry(None, *OPTIONAL_POSITIVE_INT)
    eval_steps: int | None = _entry(None, *OPTIONAL_POSITIVE_INT)
    check_every: int = _entry(1, *POSITIVE_INT)
    step_size: float | None = _entry(None, lambda v: v is None or _number(v), "a finite number")
    temperature: float | None = _entry(None, lambda v: v is None or _number(v), "a finite number")
    anneal: float = _entry(1.0, *NUMBER)
    history: int = _entry(5, *POSITIVE_INT)
    mixing: float = _entry(1.0, *NUMBER)
    estimator: str = _entry("ep", *_one_of(ESTIMATORS))
    beta: float = _entry(_REQUIRED, *NUMBER)
    variant: str = _entry("centered", *NAME)
    eta: float = _entry(0.5, *NUMBER)
    num_phases: int = _entry(4, *POSITIVE_INT)
    random_sign: bool = _entry(False, *FLAG)
    warm_start: bool = _entry(False, *FLAG)
    persistent: bool = _entry(False, *FLAG)
    # the optimizer
    batch_size: int = _entry(_REQUIRED, *POSITIVE_INT)
    optimizer: str = _entry("sgd", *_one_of(("sgd", "adam")))
    learning_rate: float | tuple = _entry(_REQUIRED, lambda v: (_number(v) and v >= 0) or (
        isinstance(v, tuple) and len(v) > 0 and all(_number(r) and r >= 0 for r in v)),
        "a number >= 0 or a list of them, one per layer")
    decay: float = _entry(1.0, lambda v: _number(v) and 0 < v <= 1, "a number in (0, 1]")
    schedule: str = _entry("exponential", *_one_of(("exponential", "cosine")))
    schedule_epochs: int | None = _entry(None, *OPTIONAL_POSITIVE_INT)
    momentum: float = _entry(0.0, lambda v: _number(v) and 0 <= v < 1, "a number in [0, 1)")
    weight_decay: float = _entry(0.0, lambda v: _number(v) and v >= 0, "a number >= 0")
    # the data
    standardise: bool = _entry(False, *FLAG)
    crop_padding: int = _entry(0, lambda v: _int(v) and v >= 0, "an int >= 0")
    flip: bool = _entry(False, *FLAG)
    # the run (set by the programs' options, not by the named configs)
    model: str = _entry("", *NAME)
    dataset: str = _entry("mnist", *NAME)
    seed: int = _entry(0, lambda v: _int(v) and 0 <= v < 2**31 - 1, f"an int between 0 and {2**31 - 2}")
    epochs: int = _entry(5, *POSITIVE_INT)
    chunk: int = _entry(250, *POSITIVE_INT)
    train_limit: int | None = _entry(None, *OPTIONAL_POSITIVE_INT)
    test_limit: int | None = _entry(None, *OPTIONAL_POSITIVE_INT)
    validation: int = _entry(0, lambda v: _int(v) and v >= 0, "an int >= 0")
    patience: int | None = _entry(None, *OPTIONAL_POSITIVE_INT)
    batches_per_epoch: int | None = _entry(None, *OPTIONAL_POSITIVE_INT)
    jax_version: str = _entry("", *NAME)
    backend: str = _entry("", *NAME)

    @classmethod
    def from_dict(cls, entries: dict) -> "RunConfig":
        """The config of a JSON object (lists become tuples); ``ValueError`` naming an unknown or
        missing entry, or the first entry that is not of its kind."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(entries) - names)
        if unknown:
            raise ValueError(f"unknown config entries {unknown}")
        missing = sorted(f.name for f in dataclasses.fields(cls) if f.default is _REQUIRED and f.name not in entries)
        if missing:
            raise ValueError(f"the config lacks {missing}")
        config = cls(**{name: _frozen(value) for name, value in entries.items()})
        config.check_kinds()
        return config

    def updated(self, **entries) -> "RunConfig":
        """A copy with ``entries`` replaced (JSON lists as tuples; values not checked, so traced
        sweep values may be given)."""
        return dataclasses.replace(self, **{name: _frozen(value) for name, value in entries.items()})

    def to_dict(self) -> dict:
        """The JSON object of this config (tuples as lists)."""
        return {f.name: _thawed(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def check_kinds(self) -> None:
        """``ValueError`` naming the first entry that is not of its kind."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not f.metadata["test"](value):
                raise ValueError(f"{f.name} must be {f.metadata['what']}, got {_thawed(value)!r}")



def _frozen(value):
    """JSON lists as tuples (hashable, immutable)."""
    return tuple(_frozen(v) for v in value) if isinstance(value, list) else value


def _thawed(value):
    return [_thawed(v) for v in value] if isinstance(value, tuple) else value
