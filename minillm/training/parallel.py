"""Data-parallel training on a laptop's cores, and gradient accumulation: the same mathematics.

The loss of a batch is the mean over its kept targets. Split the batch into shards i with n_i
kept targets each (n = sum of n_i); shard i's own mean loss is L_i, so

    L = sum_i (n_i / n) L_i        and therefore        grad L = sum_i (n_i / n) grad L_i:

the gradient of a sum is the sum of the gradients. Each shard's forward and backward pass is
independent of the others, so they can run at the same time: GPT-3 trains this way across
thousands of GPUs, and here two threads do it across a laptop's two cores. NumPy releases
Python's global lock inside its kernels, so the threads really run in parallel; each uses one
BLAS thread (``threadpool_limits(1)``), which also spares the matrix library from spinning a
second thread during all the element-wise work. The result equals the one-thread step within
float32 rounding (the sum is taken in another order), and is bit for bit the same for a fixed
number of workers, so a resumed run continues exactly.

Gradient accumulation (``--grad-accum-steps K``) applies the same sum over K batches drawn one
after the other: a K-times larger batch in the memory of one.

    >>> from minillm import GPT, GPTConfig
    >>> model = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8))
    >>> idx = np.random.default_rng(0).integers(0, 11, size=(4, 8))
    >>> loss, grads = DataParallel(model, workers=2).loss_and_grads(idx[:, :-1], idx[:, 1:])
    >>> bool(abs(loss - model.loss(idx[:, :-1], idx[:, 1:])) < 1e-5)
    True
"""
from concurrent.futures import ThreadPoolExecutor

from dataclasses import field

import numpy as np

from ..core.optim import one_after_another


def workers_field():
    """The ``workers`` field of a run config (train's and finetune's share it)."""
    return field(default=2, metadata={
        "help": "threads that share each batch (data parallelism over the cores; one BLAS "
                "thread each); 1: one thread, BLAS's own threads", "min": 1})


def grad_accum_field():
    """The ``grad_accum_steps`` field of a run config."""
    return field(default=1, metadata={
        "help": "batches whose gradients are added before each AdamW step (an effective batch "
                "of grad_accum_steps x batch_size)", "min": 1})


def weighted_sum(results, run=None):
    """[(loss_i, grads_i, n_i), ...] -> (loss, grads) with weights n_i / n (see the module's
    formula). The gradients are added into the first shard's arrays (no new ones); ``run`` as
    for ``AdamW.step`` (``DataParallel.run`` shares the keys out over the threads)."""
    n = sum(kept for _, _, kept in results)
    weights = [kept / n for _, _, kept in results]     # Python floats: keep float32 float32
    loss = sum(w * shard_loss for w, (shard_loss, _, _) in zip(weights, results))
    grads = results[0][1]

    def add(keys):
        for name in keys:
            g = grads[name]
            g *= weights[0]
            for w, (_, shard_grads, _) in zip(weights[1:], results[1:]):
                g += w * shard_grads[name]

    (run or one_after_another)(add, list(grads))
    return loss, grads


def kept_targets(y):
    """How many targets of ``y`` count in the mean loss (-1 means ignored)."""
    return int(np.count_nonzero(np.asarray(y) != -1))


class DataParallel:
    """``model.loss_and_grads`` with the batch split over ``workers`` threads.

    ``model`` is anything with ``loss_and_grads(x, y, *, train, rng)`` (a GPT, a LoRA around
    one, ...). Every shard gets its own generator (for dropout), seeded from ``rng``'s state,
    so the result depends only on ``rng`` and the number of workers. Run the step inside
    ``threadpool_limits(1)`` (``one_blas_thread()``): the threads, not the BLAS library, use the
    cores.
    """

    def __init__(self, model, workers=2):
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.model, self.workers = model, workers
        self.pool = ThreadPoolExecutor(workers) if workers > 1 else None
        self._groups = {}

    def loss_and_grads(self, x, y, *, train=True, rng=None):
        """Mean loss of the whole batch and its gradients: the weighted sum of the shards'."""
        if self.pool is None:
            return self.model.loss_and_grads(x, y, train=train, rng=rng)
        shards = self.shards(x, y)
        rng = np.random.default_rng() if rng is None else rng
        # One generator a shard (for dropout), seeded from rng's state without drawing from it:
        # the batches that rng gives next are those of a one-thread run.
        state = rng.bit_generator.state["state"]["state"]

        def shard_step(i):
            xs, ys = shards[i]
            loss, grads = self.model.loss_and_grads(xs, ys, train=train,
                                                    rng=np.random.default_rng([state, i]))
            return loss, grads, kept_targets(ys)

        return weighted_sum(self.map(shard_step, range(len(shards))), self.run)

    def shards(self, x, y):
        """The batch (x, y) cut into up to ``workers`` shards of consecutive rows."""
        return [(xs, ys) for xs, ys in zip(np.array_split(x, self.workers),
                                           np.array_split(y, self.workers)) if len(xs)]

    def map(self, fn, items):
        """[fn(item) for item in items], one a thread, in the caller's np.errstate (which
        threads do not inherit)."""
        errors = np.geterr()

        def in_errstate(item):
            with np.errstate(**errors):
                return fn(item)
        return list(self.pool.map(in_errstate, items))

    def run(self, fn, keys):
        """``fn(group)`` for ``workers`` groups of ``keys`` of about equal size (in numbers),
        at the same time, one a thread; returns their results. The ``run`` of AdamW.step,
        clip_grad_norm and weighted_sum: each thread updates its share of the parameters
        (the optimizer's state is sharded across the threads, as ZeRO shards it across GPUs)."""
        if self.pool is None:
            return [fn(keys)]
        return self.map(fn, self.groups(tuple(keys)))

    def groups(self, keys):
        """``keys`` in ``workers`` groups of about equal size, made once per set of keys."""
        if keys not in self._groups:
            sizes = {k: getattr(self.model, "params", {}).get(k, np.empty(1)).size for k in keys}
            groups, totals = [[] for _ in range(self.workers)], [0] * self.workers
            for k in sorted(keys, key=lambda k: -sizes[k]):          # largest first
                i = totals.index(min(totals))
                groups[i].append(k)
                totals[i] += sizes[k]
            self._groups[keys] = groups
        return self._groups[keys]

    def loss(self, x, y, *, train=False, rng=None):
        """Mean loss of the batch (no gradients), its shards evaluated in parallel too."""
        if self.pool is None or train:
            return self.model.loss(x, y, train=train, rng=rng)
        losses = self.map(lambda s: (self.model.loss(*s), kept_targets(s[1])), self.shards(x, y))
        n = sum(kept for _, kept in losses)
        return sum(loss * (kept / n) for loss, kept in losses)


def one_blas_thread():
    """A context in which the BLAS library uses one thread (threadpoolctl), or a no-op when
    threadpoolctl is not installed."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:                                 # pragma: no cover - listed in the deps
        import contextlib
        return contextlib.nullcontext()
    return threadpool_limits(1)
