import numpy as np
import optax
import pytest
import jax.numpy as jnp

from nlm_jax import optim

# original-behaviour.md 15.1: f(s) for d_model 768, warmup 32000.
F = {1: 6.3036838317178e-09, 2: 1.26073676634356e-08, 100: 6.303683831717801e-07,
     1000: 6.303683831717801e-06, 16000: 1.0085894130748481e-04, 31999: 2.017115789311379e-04,
     32000: 2.0171788261496963e-04, 32001: 2.0171473084692316e-04, 64000: 1.42636082683637e-04,
     100000: 1.141088661469096e-04, 320000: 6.378879538497859e-05,
     625000: 4.564354645876384e-05, 1000000: 3.608439182435161e-05}


@pytest.mark.parametrize("s", sorted(F))
def test_schedule_matches_reference(s):
  # Update s (s = 1, 2, ...) uses f(s): optax passes count = s - 1.
  lr = optim.lr_schedule(768, 32000)(jnp.asarray(s - 1))
  np.testing.assert_allclose(float(lr), F[s], rtol=2e-6)


@pytest.mark.parametrize("d, peak", [(256, 3.4939e-4), (512, 2.4705e-4), (1024, 1.7469e-4)])
def test_peak_for_other_widths(d, peak):
  np.testing.assert_allclose(float(optim.lr_schedule(d, 32000)(31999)), peak, rtol=1e-4)


def test_updates_use_lr_of_their_own_step():
  """No off-by-one: updates 1, 2, 3 use f(1), f(2), f(3) (the original used f(1) twice)."""
  tx = optim.make_optimizer(768, 32000)
  params = {"w": jnp.zeros(())}
  state = tx.init(params)
  applied = []
  for _ in range(3):
    # Adam's first update moves by lr * sign(g) (bias-corrected, |g| >> eps).
    updates, state = tx.update({"w": jnp.asarray(0.5)}, state, params)
    applied.append(-float(updates["w"]))
    params = optax.apply_updates(params, updates)
  np.testing.assert_allclose(applied[0], F[1], rtol=1e-5)
  np.testing.assert_allclose(applied[1], F[2], rtol=1e-5)
  np.testing.assert_allclose(applied[2], 3 * F[1], rtol=1e-5)


def test_no_warmup_is_pure_rsqrt():
  schedule = optim.lr_schedule(64, 0)
  for s in (1, 2, 10, 1000):
    np.testing.assert_allclose(float(schedule(s - 1)), 64 ** -0.5 * s ** -0.5, rtol=1e-6)


def test_gradients_are_clipped_to_global_norm_one():
  """A gradient of 100 then 1: clipped, Adam sees 1 twice and its second step is lr(2)
  exactly; unclipped it would be 0.68 lr(2)."""
  tx = optim.make_optimizer(768, 32000)
  params = {"w": jnp.zeros(())}
  state = tx.init(params)
  _, state = tx.update({"w": jnp.asarray(100.0)}, state, params)
  updates, _ = tx.update({"w": jnp.asarray(1.0)}, state, params)
  np.testing.assert_allclose(-float(updates["w"]), F[2], rtol=1e-5)
