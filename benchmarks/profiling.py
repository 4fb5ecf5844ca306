"""Where a compiled JAX program spends its time on the CPU, from JAX's profiler.

:func:`operation_times` runs a program under ``jax.profiler.trace`` and returns one row per XLA
operation of its compiled module (``ynn_fusion`` rows are matrix products and convolutions,
``*_fusion`` rows fused elementwise work), with the JAX operation it came from (the HLO
``op_name`` metadata) and its result's shape. Times are the operations' own durations on the
threads that run them (XLA's thread pool ``tf_XLAEigen*`` and, for operations too small to split,
the client's own thread ``tf_XLAPjRtCpuClient*``), summed over the threads, per call: loops appear
as their bodies' operations, counted once per iteration; the runtime's own markers and waits are
left out.
"""

from __future__ import annotations

import collections
import dataclasses
import glob
import re
import tempfile

import jax

_THREADS = ("tf_XLAEigen", "tf_XLAPjRtCpuClient")
_NOT_OPERATIONS = ("while", "call", "conditional", "end:", "ThunkExecutor", "ThreadpoolListener", "SlinkyThreadPool")
_INSTRUCTION = re.compile(r"\s*(?:ROOT )?%([\w.\-]+) = (\S+) .*?op_name=\"([^\"]+)\"")


@dataclasses.dataclass(frozen=True)
class OperationTime:
    """One XLA operation: its name in the compiled module, how often and how long it ran per call
    (milliseconds, both threads), the JAX operation it came from and its result's shape."""

    name: str
    count: float
    ms: float
    source: str
    shape: str

    @property
    def kind(self) -> str:
        """The operation's name without its number, e.g. ``ynn_fusion``."""
        return re.sub(r"[._]?\d+$", "", self.name)

    @property
    def in_loop(self) -> bool:
        """Whether it runs inside a loop nested in the program's outermost one (e.g. a relaxation
        inside ``train_epoch``'s scan)."""
        return self.source.count("while/body") >= 2


def _sources(compiled_text: str) -> dict:
    """``{instruction name: (op_name, shape)}`` from a compiled module's text."""
    found = {}
    for line in compiled_text.splitlines():
        match = _INSTRUCTION.match(line)
        if match:
            found[match.group(1)] = (match.group(3), match.group(2))
    return found


def operation_times(run, compiled_text: str = "", calls: int = 3) -> list[OperationTime]:
    """Run ``run()`` ``calls`` times under JAX's profiler (compile and warm it up first); one
    :class:`OperationTime` per operation, per call, slowest first. ``compiled_text``
    (``jitted.lower(...).compile().as_text()``) names each operation's JAX source and shape."""
    with tempfile.TemporaryDirectory() as directory:
        with jax.profiler.trace(directory):
            for _ in range(calls):
                jax.block_until_ready(run())
        data = jax.profiler.ProfileData.from_file(glob.glob(f"{directory}/**/*.xplane.pb", recursive=True)[0])
    totals = collections.defaultdict(lambda: [0, 0.0])
    for plane in data.planes:
        for line in plane.lines:
            if not line.name.startswith(_THREADS):  # the threads that run XLA's operations
                continue
            for event in line.events:
                if not event.name.startswith(_NOT_OPERATIONS):
                    totals[event.name][0] += 1
                    totals[event.name][1] += event.duration_ns / 1e6
    sources = _sources(compiled_text)
    rows = [OperationTime(name, count / calls, ms / calls, *sources.get(name, ("", "")))
            for name, (count, ms) in totals.items()]
    return sorted(rows, key=lambda row: -row.ms)


def by_kind(rows: list[OperationTime]) -> dict:
    """``{kind: (count, ms)}`` summed over operations of the same kind, slowest first."""
    kinds = collections.defaultdict(lambda: [0.0, 0.0])
    for row in rows:
        kinds[row.kind][0] += row.count
        kinds[row.kind][1] += row.ms
    return dict(sorted(((kind, tuple(v)) for kind, v in kinds.items()), key=lambda item: -item[1][1]))
