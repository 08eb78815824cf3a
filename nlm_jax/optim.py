"""The optimizer of lncRNA-Py: global-norm clipping at 1.0, Adam(0.9, 0.98) and the
warmup-rsqrt ("Noam") learning-rate schedule, without its off-by-one."""

from __future__ import annotations

import optax

CLIP_NORM = 1.0  # lncRNA-Py's global-norm clipping, pre-training and fine-tuning


def lr_schedule(d_model: int, warmup_steps: int) -> optax.Schedule:
  """lr(s) = d_model^-0.5 * min(s^-0.5, s * warmup^-1.5) for update s = count + 1.

  optax counts completed updates from 0, so update s = 1, 2, ... uses lr(s).
  """
  scale = d_model ** -0.5
  rsqrt = lambda count: scale * (count + 1.0) ** -0.5
  if warmup_steps == 0:
    return rsqrt
  # A product, not optax.linear_schedule: its float32 interpolation is 0.2% off at s = 1.
  warmup = lambda count: scale * warmup_steps ** -1.5 * (count + 1.0)
  # join_schedules hands the second schedule count - warmup_steps.
  decay = lambda count: rsqrt(count + warmup_steps)
  return optax.join_schedules([warmup, decay], [warmup_steps])


def make_optimizer(d_model: int, warmup_steps: int) -> optax.GradientTransformation:
  return optax.chain(
      optax.clip_by_global_norm(CLIP_NORM),
      optax.adam(lr_schedule(d_model, warmup_steps), b1=0.9, b2=0.98, eps=1e-8))


def make_finetune_optimizer(learning_rate: float, weight_decay: float
                            ) -> optax.GradientTransformation:
  """Fine-tuning's torch.optim.Adam(lr, weight_decay) (betas 0.9, 0.999; the decay is
  added to the gradient, L2-style) with a constant rate, after clipping at 1.0."""
  return optax.chain(optax.clip_by_global_norm(CLIP_NORM),
                     optax.add_decayed_weights(weight_decay),
                     optax.adam(learning_rate, b1=0.9, b2=0.999, eps=1e-8))
