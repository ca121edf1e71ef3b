"""Finn et al.'s sinusoid MAML step written in PyTorch with ``create_graph=True``.

What a MAML user writes (the structure of the public PyTorch ports of Finn's code): a
functional 1-40-40-1 ReLU network, for each task of the meta-batch one inner gradient
step with ``torch.autograd.grad(..., create_graph=True)``, the query loss at the adapted
weights, their mean backpropagated through the inner step (the exact second-order
meta-gradient), and ``torch.optim.Adam``. Eager mode on the CPU. The loss is the mean
squared error, as in Finn's code; fastmeta's squared loss is half of it, so its inner
step is twice this one's.

PyTorch is imported only when :class:`TorchMAML` is built (``ImportError`` otherwise).
"""
from __future__ import annotations

import numpy as np


class TorchMAML:
    """One meta-step ``step(batch)`` on a :class:`fastmeta.sl.TaskBatch` (numpy in).

    Parameters
    ----------
    layers : list of (W, b) numpy arrays
        Initial weights, e.g. ``MLP.unflatten(theta0)`` (copied).
    inner_lr : float
        Inner step on the MSE loss (Finn: 0.01).
    outer_lr : float
        Adam step (Finn: 0.001).
    dtype : {"float32", "float64"}
        float32 is what the public implementations use.
    batched : bool
        False: a Python loop over tasks (the public implementations); True: all tasks
        at once with batched matrix products (the fastest eager form we know).
    """

    def __init__(self, layers, inner_lr=0.01, outer_lr=0.001, dtype="float32", batched=False):
        import torch
        self.torch = torch
        self.dtype = getattr(torch, dtype)
        self.params = [torch.tensor(np.array(a), dtype=self.dtype, requires_grad=True)
                       for W, b in layers for a in (W, b)]
        self.inner_lr = inner_lr
        self.batched = batched
        self.opt = torch.optim.Adam(self.params, lr=outer_lr)

    def _forward(self, params, x):
        n = len(params) // 2
        h = x
        for l in range(n):
            W, b = params[2 * l], params[2 * l + 1]
            h = h @ W.transpose(-1, -2) + b.unsqueeze(-2)
            if l < n - 1:
                h = self.torch.relu(h)
        return h.squeeze(-1)

    def meta_loss(self, batch):
        torch = self.torch
        X = torch.as_tensor(batch.X, dtype=self.dtype)
        y = torch.as_tensor(batch.y, dtype=self.dtype)
        Xq = torch.as_tensor(batch.X_query, dtype=self.dtype)
        yq = torch.as_tensor(batch.y_query, dtype=self.dtype)
        n = X.shape[0]
        if self.batched:
            params = [p.unsqueeze(0).expand(n, *p.shape) for p in self.params]
            loss = ((self._forward(params, X) - y) ** 2).mean(dim=1).sum()
            grads = torch.autograd.grad(loss, params, create_graph=True)
            fast = [p - self.inner_lr * g for p, g in zip(params, grads)]
            return ((self._forward(fast, Xq) - yq) ** 2).mean()
        total = 0.0
        for i in range(n):
            loss = ((self._forward(self.params, X[i]) - y[i]) ** 2).mean()
            grads = torch.autograd.grad(loss, self.params, create_graph=True)
            fast = [p - self.inner_lr * g for p, g in zip(self.params, grads)]
            total = total + ((self._forward(fast, Xq[i]) - yq[i]) ** 2).mean()
        return total / n

    def step(self, batch):
        """One Adam step on the exact meta-gradient of the batch; returns the meta-loss (MSE)."""
        self.opt.zero_grad()
        loss = self.meta_loss(batch)
        loss.backward()
        self.opt.step()
        return float(loss.detach())

    def flat_grad(self, batch):
        """The meta-gradient as one flat numpy vector (no optimiser step), for checks."""
        for p in self.params:
            p.grad = None
        self.meta_loss(batch).backward()
        return np.concatenate([p.grad.detach().numpy().ravel() for p in self.params])
