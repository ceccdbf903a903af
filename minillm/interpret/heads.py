"""Interventions on attention heads: ablation, the head-mask gradient, activation patching.

Head h of layer l outputs y_h (B, T, hs); c_proj mixes the heads, out = [y_0 | ... ] W + b.
The interventions change y_h and run the rest of the model as it is:

    zero ablation       y_h -> 0              (``head_mask`` entry 0: the head is removed)
    mean ablation       y_h -> mean of y_h over the batch and the positions (a constant: what
                        the head says on average, without its information about this input)
    head importance     dL/dm_h at m = 1 (Michel et al. 2019): to first order, removing the
                        head changes the loss by about -dL/dm_h
    patching            y_h of a run on a corrupted input -> y_h of the run on the clean input
                        (all positions or only some): how much of the clean behaviour comes back

The forward pass takes ``head_mask`` (n_layer, n_head) and ``head_hook(layer, heads)``, heads
(B, T, nh, hs) (``GPT.forward``); everything here is built on those two.

Shape legend: L layers, nh heads, B batch, T time, hs head size.
"""
from typing import NamedTuple

import numpy as np


def record_heads(model, idx):
    """Every head's output on idx: a list of L arrays (B, T, nh, hs) (copies).

    >>> from minillm import GPT, GPTConfig
    >>> model = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=8))
    >>> [a.shape for a in record_heads(model, np.array([[1, 2, 3]]))]
    [(1, 3, 2, 4), (1, 3, 2, 4)]
    """
    kept = {}

    def hook(layer, heads):
        kept[layer] = heads.copy()
        return heads

    model.forward(idx, head_hook=hook)
    return [kept[layer] for layer in range(model.config.n_layer)]


def patch_heads(model, idx, source, heads, positions=None):
    """Logits (B, T, V) of idx with the outputs of ``heads`` [(layer, head), ...] replaced by
    those in ``source`` (``record_heads`` of another run on inputs of the same shape), at
    every position or only at ``positions`` (a list of time indices).

    >>> from minillm import GPT, GPTConfig
    >>> model = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8))
    >>> a, b = np.array([[1, 2, 3]]), np.array([[4, 2, 3]])
    >>> same = patch_heads(model, a, record_heads(model, a), [(0, 0)])  # its own outputs
    >>> bool((same == model.forward(a)).all()), patch_heads(model, b, record_heads(model, a),
    ...                                                      [(0, 1)], positions=[2]).shape
    (True, (1, 3, 11))
    """
    return model.forward(idx, head_hook=patch_hook(source, heads, positions))


def patch_hook(source, heads, positions=None):
    """The head_hook that puts source[layer][:, t, head] in place of the outputs of ``heads``
    [(layer, head), ...] at the times t in ``positions`` (all when None)."""
    t = slice(None) if positions is None else np.asarray(positions)
    chosen = {}
    for layer, head in heads:
        chosen.setdefault(layer, []).append(head)

    def hook(layer, y):
        if layer in chosen:
            y = y.copy()
            for head in chosen[layer]:
                y[:, t, head] = source[layer][:, t, head]
        return y

    return hook


def head_ablation(model, idx, targets, method="zero"):
    """The (n_layer, n_head) table of loss increases on targets (B, T) (-1 = not counted) when
    one head at a time is removed: ``method`` "zero" (its output set to 0) or "mean" (set to
    its mean over this batch and its positions). The clean loss is ``model.loss(idx, targets)``.

    >>> from minillm import GPT, GPTConfig
    >>> model = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=8))
    >>> head_ablation(model, np.array([[1, 2, 3]]), np.array([[2, 3, 4]])).shape
    (2, 2)
    """
    if method not in ("zero", "mean"):
        raise ValueError(f"head_ablation: method must be 'zero' or 'mean', got {method!r}")
    config = model.config
    clean = model.loss(idx, targets)
    means = None
    if method == "mean":
        means = [y.mean(axis=(0, 1)) for y in record_heads(model, idx)]   # (nh, hs) per layer
    table = np.zeros((config.n_layer, config.n_head))
    for layer in range(config.n_layer):
        for head in range(config.n_head):
            if method == "zero":
                mask = np.ones((config.n_layer, config.n_head))
                mask[layer, head] = 0.0
                loss = model.loss(idx, targets, head_mask=mask)
            else:
                def hook(l, y, layer=layer, head=head):
                    if l == layer:
                        y = y.copy()
                        y[:, :, head] = means[layer][head]
                    return y
                loss = model.loss(idx, targets, head_hook=hook)
            table[layer, head] = loss - clean
    return table


def head_importance(model, idx, targets):
    """dL/dm (n_layer, n_head): the gradient of the loss on targets with respect to the head
    mask, at m = 1 (all heads on), in evaluation mode. Michel et al. (2019) rank heads by its
    size; -dL/dm_h is the first-order estimate of ``head_ablation``'s entry for head h.

    >>> from minillm import GPT, GPTConfig
    >>> model = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=8))
    >>> head_importance(model, np.array([[1, 2, 3]]), np.array([[2, 3, 4]])).shape
    (2, 2)
    """
    config = model.config
    ones = np.ones((config.n_layer, config.n_head), dtype=model.dtype)
    _, grads = model.loss_and_grads(idx, targets, train=False, head_mask=ones)
    return grads["head_mask"]


class PatchingResult(NamedTuple):
    patched: np.ndarray          # (n_layer, n_head) loss of the corrupted run with that head
                                 # patched from the clean run
    clean: float                 # loss of the clean run
    corrupted: float             # loss of the corrupted run, nothing patched

    @property
    def restored(self):
        """(n_layer, n_head): the fraction of the loss gap each head closes,
        (corrupted - patched) / (corrupted - clean): 1 = as good as clean, 0 = no help."""
        return (self.corrupted - self.patched) / (self.corrupted - self.clean)


def head_patching(model, clean_idx, corrupted_idx, targets, positions=None):
    """Activation patching, one head at a time: the loss on targets (B, T) of the corrupted
    input when one head's output (at every position, or only at ``positions``) is taken from
    the run on the clean input. clean_idx and corrupted_idx: (B, T), the same shape.

    >>> from minillm import GPT, GPTConfig
    >>> model = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=8))
    >>> r = head_patching(model, np.array([[1, 2, 3]]), np.array([[4, 2, 3]]),
    ...                   np.array([[2, 3, 4]]))
    >>> r.patched.shape
    (2, 2)
    """
    clean_idx, corrupted_idx = np.asarray(clean_idx), np.asarray(corrupted_idx)
    if clean_idx.shape != corrupted_idx.shape:
        raise ValueError(f"head_patching: the clean input has shape {clean_idx.shape}, the "
                         f"corrupted one {corrupted_idx.shape}; they must be the same")
    config = model.config
    source = record_heads(model, clean_idx)
    table = np.zeros((config.n_layer, config.n_head))
    for layer in range(config.n_layer):
        for head in range(config.n_head):
            hook = patch_hook(source, [(layer, head)], positions)
            table[layer, head] = model.loss(corrupted_idx, targets, head_hook=hook)
    return PatchingResult(table, model.loss(clean_idx, targets),
                          model.loss(corrupted_idx, targets))
