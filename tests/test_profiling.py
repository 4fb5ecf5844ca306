"""benchmarks.profiling: per-operation times of a compiled program from JAX's profiler (what
`python -m benchmarks.conv_vs_torch --profile` and `benchmarks.sweep_small --profile` print)."""

import jax
import jax.numpy as jnp

from benchmarks.profiling import by_kind, operation_times


def test_operation_times_counts_each_loop_iteration_and_names_the_source_and_shape():
    step = jax.jit(lambda a, b: jax.lax.fori_loop(0, 3, lambda _, a: jnp.tanh(a @ b), a))
    a, b = jnp.ones((64, 64), jnp.float32), jnp.full((64, 64), 1 / 64, jnp.float32)
    rows = operation_times(lambda: step(a, b), step.lower(a, b).compile().as_text(), calls=2)
    products = [row for row in rows if row.source.endswith("dot_general")]
    assert len(products) == 1, rows
    assert products[0].shape.startswith("f32[64,64]")
    assert products[0].count == 3  # once per iteration of the loop, per call
    assert products[0].ms > 0 and not products[0].in_loop  # one loop deep: not a loop inside a loop
    kinds = by_kind(rows)
    assert sum(count for count, _ in kinds.values()) == sum(row.count for row in rows)
    assert list(kinds.values()) == sorted(kinds.values(), key=lambda item: -item[1])
