"""The meta-RL objective written densely in PyTorch and differentiated by autograd.

What an ML researcher would write: dense (S, A, S) kernels, M = I - gamma P_pi as a
dense matrix, ``torch.linalg.solve`` for the two policy evaluations per task, float64
on the CPU, ``loss.backward()`` for the meta-gradient (eager mode, no compilation).
Dense, so meant for S up to about 2000.

PyTorch is imported only when :class:`TorchMetaRL` is built (``ImportError`` otherwise).
"""
from __future__ import annotations

import numpy as np


def available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


class TorchMetaRL:
    """``objective``, ``gradient``, ``value_and_grad`` of one problem (numpy in, numpy out).

    ``prob`` is :func:`benchmarks.baselines.problem_arrays` output. Construction
    densifies the kernels into torch tensors.
    """

    def __init__(self, prob, tau=1.0, eta=1.0):
        import torch
        self.torch = torch
        phi = prob["phi"]
        S, A, d = phi.shape
        self.S, self.A = S, A
        kernels, index, seen = [], [], {}
        for P in prob["P"]:
            if id(P) not in seen:
                seen[id(P)] = len(kernels)
                kernels.append(torch.from_numpy(P.toarray().reshape(S, A, S)))
            index.append(seen[id(P)])
        self.kernels, self.index = kernels, index
        self.Phi = torch.from_numpy(np.ascontiguousarray(phi.reshape(S * A, d)))
        self.rs = [torch.from_numpy(np.ascontiguousarray(r, dtype=np.float64)) for r in prob["r"]]
        self.inits = [torch.from_numpy(np.ascontiguousarray(z, dtype=np.float64)) for z in prob["init"]]
        self.gammas = list(prob["gamma"])
        self.eye = torch.eye(S, dtype=torch.float64)
        self.tau, self.eta = tau, eta

    def _loss(self, theta):
        torch = self.torch
        S, A = self.S, self.A
        logits = (self.Phi @ theta).reshape(S, A) / self.tau
        pi = torch.softmax(logits, dim=1)
        total = 0.0
        n = len(self.rs)
        for j in range(n):
            P3, r, g, zeta = self.kernels[self.index[j]], self.rs[j], self.gammas[j], self.inits[j]
            M = self.eye - g * torch.einsum("sa,sat->st", pi, P3)
            V = (1 - g) * torch.linalg.solve(M, (pi * r).sum(dim=1))
            Q = (1 - g) * r + g * torch.einsum("sat,t->sa", P3, V)
            pi_i = torch.softmax(logits + self.eta * Q, dim=1)
            M_i = self.eye - g * torch.einsum("sa,sat->st", pi_i, P3)
            V_i = (1 - g) * torch.linalg.solve(M_i, (pi_i * r).sum(dim=1))
            total = total + zeta @ V_i
        return total / n

    def objective(self, theta):
        with self.torch.no_grad():
            return float(self._loss(self.torch.as_tensor(np.asarray(theta, dtype=np.float64))))

    def value_and_grad(self, theta):
        t = self.torch.tensor(np.asarray(theta, dtype=np.float64), requires_grad=True)
        loss = self._loss(t)
        loss.backward()
        return float(loss.detach()), t.grad.numpy().copy()

    def gradient(self, theta):
        return self.value_and_grad(theta)[1]


def version() -> str:
    import torch
    return f"torch {torch.__version__} (threads {torch.get_num_threads()})"
