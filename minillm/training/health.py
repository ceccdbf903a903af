"""Training health: per-layer statistics of activations, gradients and updates (``--health``).

Karpathy's diagnostics (makemore part 3, "Building makemore Part 3: Activations & Gradients,
BatchNorm"), for a Transformer. At each evaluation the training loop measures, on that
iteration's batch:

    activations, per block l   std of the residual stream after the block (it should grow
                               slowly, not explode); mean entropy of the attention rows in nats
                               (near 0: every head looks at one position; ln T: uniform); the
                               share of the MLP's hidden inputs below -3, where GELU is flat
                               (|GELU'| < 0.012; SiLU's slope is below 0.09 there) and passes
                               almost no gradient
    gradients, per weight      std(grad) / std(weight), the gradient-to-data ratio
    updates, per weight        log10(std(update) / std(weight)): how far one AdamW step moves a
                               matrix relative to its size; about -3 is healthy, much higher
                               means the learning rate is too large, much lower too small

Every matrix is a weight of at least two dimensions (embeddings, c_attn, c_proj, c_fc, ...);
the gradients are those the optimizer gets (after clipping). ``plot_health`` (viz.py) draws a
run's records as ``health.png``.
"""
import math

import numpy as np

HEALTH = "health.json"   # the records, in the run folder
FLAT = -3.0              # below it |GELU'(x)| < 0.012 (|SiLU'(x)| < 0.09): almost flat


def _std(a):
    return float(np.std(a, dtype=np.float64))


def activation_stats(model, x):
    """One forward pass (evaluation mode) on x (B, T) -> a list of one dict per block:
    {"resid_std", "attn_entropy", "mlp_flat"}."""
    _, cache = model.forward_with_cache(x)
    outputs = [block.ln_1.x for block in cache.h[1:]] + [cache.ln_f.x]
    stats = []
    for block, out in zip(cache.h, outputs):
        att = block.att                                                  # (B, nh, T, T)
        entropy = -(att * np.log(np.where(att > 0, att, 1.0))).sum(axis=-1)
        hidden = block.mlp.gelu.x if hasattr(block.mlp, "gelu") else block.mlp.silu.x
        stats.append({"resid_std": _std(out), "attn_entropy": float(entropy.mean()),
                      "mlp_flat": float((hidden < FLAT).mean())})
    return stats


def weight_names(params):
    """The names of the matrices (2-D and more) among the parameters, in their order."""
    return [name for name, p in params.items() if p.ndim >= 2]


def before_step(it, model, x, grads):
    """Iteration ``it``'s record before its optimizer step: the activations on its batch x, the
    gradient-to-data ratio of every matrix; and copies of the matrices, for ``after_step``."""
    params = model.params
    before = {name: params[name].copy() for name in weight_names(params)}
    weights = {name: {"grad_ratio": _std(grads[name]) / (_std(w) or 1.0)}
               for name, w in before.items()}
    return {"iter": it, "layers": activation_stats(model, x), "weights": weights}, before


def after_step(record, before, params):
    """Complete the record with log10(std(update) / std(weight)) of the step just taken."""
    for name, w in before.items():
        update = _std(params[name] - w)
        record["weights"][name]["update_ratio"] = \
            math.log10(update / (_std(w) or 1.0)) if update > 0 else None
    return record
