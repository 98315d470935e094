"""popjax.ops.lstm (the recurrence with a hand-written backward pass) and popjax.models.LSTM against flax's
nn.RNN(OptimizedLSTMCell), JAX's own differentiation of the plain loop, and finite differences."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from popjax.models.lstm import LSTM, lstm_scan
from popjax.ops.lstm import lstm
from popjax.testing.references import FlaxBiLSTM

B, T, D, H = 5, 7, 6, 4
LENGTHS = np.array([7, 4, 1, 0, 3])


class PopjaxBiLSTM(nn.Module):
    recurrence: object = lstm   # the hand-written backward pass; lstm_scan: JAX differentiates the loop

    @nn.compact
    def __call__(self, x, lengths):
        return (LSTM(H, recurrence=self.recurrence, name="forward")(x, lengths),
                LSTM(H, reverse=True, recurrence=self.recurrence, name="backward")(x, lengths))


@pytest.fixture(scope="module")
def case():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(B, T, D)).astype(np.float32)
    x[np.arange(T)[None] >= LENGTHS[:, None]] = 0.0
    lengths = jnp.asarray(LENGTHS)
    ref_vars = FlaxBiLSTM(H).init(jax.random.key(3), x, lengths)
    # Random biases too (flax initialises them to zero), so that the test sees them.
    ref_vars = jax.tree_util.tree_map_with_path(
        lambda path, a: a + 0.3 * rng.normal(size=a.shape).astype(np.float32) if path[-1].key == "bias" else a, ref_vars)
    cot = [rng.normal(size=s).astype(np.float32) for s in [(B, H), (B, T, H)] * 2]
    return x, lengths, ref_vars, cot


def test_parameters_are_flax_optimized_lstm_cell_ones():
    """Same tree, shapes and initial values as nn.RNN(OptimizedLSTMCell): old checkpoints load, runs start alike."""
    x, lengths = jnp.zeros((B, T, D)), jnp.asarray(LENGTHS)
    ref = FlaxBiLSTM(H).init(jax.random.key(3), x, lengths)
    ours = PopjaxBiLSTM().init(jax.random.key(3), x, lengths)
    assert jax.tree.structure(ours) == jax.tree.structure(ref)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref)):
        np.testing.assert_array_equal(a, b)


def valid(o):
    return jnp.where((np.arange(T)[None] < LENGTHS[:, None])[..., None], o, 0.0)


@pytest.mark.parametrize("recurrence", [lstm, lstm_scan], ids=["custom_vjp", "scan"])
def test_outputs_and_gradients_match_flax_rnn(case, recurrence):
    x, lengths, variables, cot = case
    ref = FlaxBiLSTM(H).apply(variables, x, lengths)
    ours = PopjaxBiLSTM(recurrence).apply(variables, x, lengths)
    has = LENGTHS > 0
    for (hr, outr), (ho, outo) in zip(ref, ours):
        np.testing.assert_allclose(ho[has], hr[has], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(outo, valid(outr), rtol=1e-5, atol=1e-6)
        assert np.all(np.asarray(outo)[np.arange(T)[None] >= LENGTHS[:, None]] == 0)   # padding: 0

    def loss(module, mask_padding):
        def f(params, x):
            (hf, of), (hb, ob) = module.apply({"params": params}, x, lengths)
            if mask_padding:   # flax's outputs in the padding are not defined as 0; take the valid steps
                of, ob = valid(of), valid(ob)
            keep = has[:, None]
            return sum(jnp.sum(a * c) for a, c in zip([hf * keep, of, hb * keep, ob], cot))
        return jax.value_and_grad(f, argnums=(0, 1))

    (v_ref, g_ref) = loss(FlaxBiLSTM(H), True)(variables["params"], x)
    (v, g) = jax.jit(loss(PopjaxBiLSTM(recurrence), False))(variables["params"], x)
    np.testing.assert_allclose(v, v_ref, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_ref)):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)
    dx = np.asarray(g[1])
    assert np.all(dx[np.arange(T)[None] >= LENGTHS[:, None]] == 0)   # padding words get no gradient


def test_custom_gradient_is_autodiff_of_the_plain_loop():
    """The hand-written backward pass gives what JAX computes by differentiating ``lstm_scan``, and the same
    forward values, for every argument."""
    rng = np.random.default_rng(3)
    args = [jnp.asarray(rng.normal(size=s).astype(np.float32) * 0.5) for s in [(T, B, D), (D, 4 * H), (H, 4 * H), (4 * H,)]]
    cot = jnp.asarray(rng.normal(size=(T, B, H)).astype(np.float32))
    np.testing.assert_array_equal(lstm(*args), lstm_scan(*args))
    ours = jax.grad(lambda *a: jnp.sum(lstm(*a) * cot), argnums=(0, 1, 2, 3))(*args)
    plain = jax.grad(lambda *a: jnp.sum(lstm_scan(*a) * cot), argnums=(0, 1, 2, 3))(*args)
    for a, b in zip(ours, plain):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_custom_gradient_matches_finite_differences():
    """The hand-written backward pass against central differences, in float64, every argument."""
    rng = np.random.default_rng(1)
    with jax.enable_x64(True):
        args = [jnp.asarray(rng.normal(size=s) * 0.5) for s in [(T, B, D), (D, 4 * H), (H, 4 * H), (4 * H,)]]
        check_grads(lstm, args, order=1, modes=["rev"], atol=1e-6, rtol=1e-6)


def test_vmapped_trials_equal_single_trials(case):
    """fit stacks trials and vmaps the step: the custom VJP's batching must give each trial its own gradient."""
    x, lengths, variables, cot = case
    rng = np.random.default_rng(2)
    stacked = jax.tree.map(lambda a: jnp.stack([a, a + 0.1 * rng.normal(size=a.shape).astype(np.float32)]),
                           variables["params"])

    def f(params):
        (hf, of), (hb, ob) = PopjaxBiLSTM().apply({"params": params}, x, lengths)
        return sum(jnp.sum(a * c) for a, c in zip([hf, of, hb, ob], cot))

    grads = jax.jit(jax.vmap(jax.grad(f)))(stacked)
    for k in range(2):
        alone = jax.grad(f)(jax.tree.map(lambda a: a[k], stacked))
        for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(alone)):
            np.testing.assert_allclose(a[k], b, rtol=1e-5, atol=1e-6)
