"""Meta-supervised learning (paper section 4): SLTask and MetaSL.

For tasks i = 1..n with support data (X_i, y_i) and query data (X_i^q, y_i^q),
a model h_theta and a loss l,

    R_i(theta)   = 1/N_i sum_j l(h_theta(x_ij), y_ij)                 (risk: mean over samples)
    theta_i      = theta - eta grad R_i(theta)                         (4.3), on the support set
    L(theta)     = 1/n sum_i R_i^q(theta_i)                            (4.4), on the query set
    grad L       = 1/n sum_i (I - eta Hess R_i(theta)) grad R_i^q(theta_i)

Without a query set R_i^q = R_i, which is exactly (4.3)-(4.4) (read A_theta(D_i, l, H)
in (4.4); the paper prints R for l). The meta-gradient is the exact second-order one,
computed with the model's Hessian-vector products (never a d x d Hessian), through the
predictor protocol of :mod:`fastmeta.models.protocol`: for a linear model and a
one-layer-trained ReLU network the Gauss-Newton product J^T diag(l''/N) J v is the exact
Hessian (their second derivative in theta vanishes, for ReLU away from kinks); the MLP
adds the curvature term 1/N sum_j l'(h_j) d^2 h_j/dtheta^2 v by the R-operator.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from ._deprecation import renamed_keyword
from ._fingerprint import array_digest
from ._kernels import sl as _ksl
from ._kernels._config import needs_compiling
from ._optim import FitResult, StepSize, digest, run_gradient_method
from ._validation import (as_float_array, check_choice, check_computed_finite, check_int,
                          check_nonempty_list, check_real_scalar)
from .models.protocol import Predictor

_LOSSES = ("squared", "logistic")
_LOSS_CODE = {"squared": _ksl.SQUARED, "logistic": _ksl.LOGISTIC}
_PROTOCOL = ("in_dim", "n_params", "predict", "vjp", "hvp", "init_params", "project", "config")
_OVERFLOW_HINT = ("Its exact value is beyond float64 at these parameters (the loss grows like (h - y)^2, "
                  "and the inner step like eta |grad h|^2): rescale X and y, or lower eta.")
SamplerFn = Callable[[np.random.Generator, int], "Sequence[SLTask] | TaskBatch"]


class SLTask:
    """One supervised-learning subtask (D_i, l, H) of section 4.1, given by samples.

    Parameters
    ----------
    X : array_like of shape (N, p)
        Support inputs (N >= 1).
    y : array_like of shape (N,)
        Support targets (labels in {0, 1} for the logistic loss).
    X_query, y_query : array_like of shape (N_q, p) and (N_q,), optional
        Query set. Without one, the inner step and the outer risk use the same data,
        exactly as in (4.3)-(4.4); with one, the inner step uses the support set and the
        risk is taken on the query set (the usual few-shot protocol). Give both or neither.
    info : dict, optional
        Free-form description kept with the task (task families store their draws here,
        e.g. the amplitude and phase of a sinusoid).
    """

    def __init__(self, X: Any, y: Any, X_query: Any = None, y_query: Any = None, *,
                 info: dict | None = None) -> None:
        owner = "SLTask"
        self.X = as_float_array(X, "X", owner, ndim=2, shape_text="(N, p)")
        if self.X.shape[0] < 1 or self.X.shape[1] < 1:
            raise ValueError(f"The 'X' parameter of SLTask must have shape (N, p) with N >= 1 and p >= 1. "
                             f"Got shape {self.X.shape} instead.")
        self.y = as_float_array(y, "y", owner, shape=(self.X.shape[0],))
        if (X_query is None) != (y_query is None):
            raise ValueError("The 'X_query' and 'y_query' parameters of SLTask must be given together. "
                             f"Got X_query={'None' if X_query is None else 'an array'} and "
                             f"y_query={'None' if y_query is None else 'an array'} instead.")
        if X_query is None:
            self.X_query = self.y_query = None
        else:
            self.X_query = as_float_array(X_query, "X_query", owner, shape=(None, self.X.shape[1]))
            if self.X_query.shape[0] < 1:
                raise ValueError("The 'X_query' parameter of SLTask must hold at least one sample. "
                                 "Got shape (0, p) instead.")
            self.y_query = as_float_array(y_query, "y_query", owner, shape=(self.X_query.shape[0],))
        if info is not None and not isinstance(info, dict):
            raise TypeError(f"The 'info' parameter of SLTask must be a dict (or None). "
                            f"Got {type(info).__name__} instead.")
        self.info = {} if info is None else dict(info)

    @property
    def in_dim(self) -> int:
        return self.X.shape[1]

    @property
    def has_query(self) -> bool:
        return self.X_query is not None

    def split(self, which: str) -> tuple[np.ndarray, np.ndarray]:
        """(X, y) of the ``"support"`` or ``"query"`` set (the support set when there is no query set)."""
        check_choice(which, "split", ("support", "query"), "SLTask.split")
        if which == "query" and self.has_query:
            return self.X_query, self.y_query
        return self.X, self.y

    def __repr__(self) -> str:
        q = f", n_query={self.X_query.shape[0]}" if self.has_query else ""
        return f"SLTask(n_support={self.X.shape[0]}, in_dim={self.in_dim}{q})"


class TaskBatch:
    """n tasks with equal sample counts as stacked arrays: the cheap form of fresh tasks.

    A sampler for ``MetaSL.fit`` may return a TaskBatch instead of a list of SLTask;
    MetaSL then packs it with a few array operations (no per-task Python objects).

    Parameters
    ----------
    X : array_like of shape (n, K, p)
        Support inputs of every task.
    y : array_like of shape (n, K)
    X_query, y_query : array_like of shape (n, K_q, p) and (n, K_q), optional
        Query sets; give both or neither (without them, query = support).
    info : dict, optional
        Free-form description of the draw (e.g. the amplitudes and phases).
    """

    def __init__(self, X: Any, y: Any, X_query: Any = None, y_query: Any = None, *,
                 info: dict | None = None) -> None:
        owner = "TaskBatch"
        self.X = as_float_array(X, "X", owner, ndim=3, shape_text="(n, K, p)")
        n, k, p = self.X.shape
        if min(n, k, p) < 1:
            raise ValueError(f"The 'X' parameter of TaskBatch must have shape (n, K, p) with every dimension "
                             f">= 1. Got shape {self.X.shape} instead.")
        self.y = as_float_array(y, "y", owner, shape=(n, k))
        if (X_query is None) != (y_query is None):
            raise ValueError("The 'X_query' and 'y_query' parameters of TaskBatch must be given together.")
        if X_query is None:
            self.X_query = self.y_query = None
        else:
            self.X_query = as_float_array(X_query, "X_query", owner, shape=(n, None, p))
            if self.X_query.shape[1] < 1:
                raise ValueError("The 'X_query' parameter of TaskBatch must hold at least one sample per task. "
                                 f"Got shape {self.X_query.shape} instead.")
            self.y_query = as_float_array(y_query, "y_query", owner, shape=self.X_query.shape[:2])
        self.info = {} if info is None else dict(info)

    @property
    def n_tasks(self) -> int:
        return self.X.shape[0]

    @property
    def in_dim(self) -> int:
        return self.X.shape[2]

    def tasks(self) -> list[SLTask]:
        """The batch as a list of SLTask (for ``adapt``, ``risk`` and the like)."""
        if self.X_query is None:
            return [SLTask(self.X[i], self.y[i]) for i in range(self.n_tasks)]
        return [SLTask(self.X[i], self.y[i], self.X_query[i], self.y_query[i]) for i in range(self.n_tasks)]

    def __repr__(self) -> str:
        q = "" if self.X_query is None else f", k_query={self.X_query.shape[1]}"
        return f"TaskBatch(n_tasks={self.n_tasks}, k_shot={self.X.shape[1]}, in_dim={self.in_dim}{q})"


@dataclass(frozen=True)
class PackedTasks:
    """Tasks as the compiled kernels take them: concatenated rows plus offsets.

    Task i owns support rows ``offs[i]:offs[i+1]`` of ``Zs``/``ys`` and query rows
    ``offq[i]:offq[i+1]`` of ``Zq``/``yq``; tasks without a query set repeat their
    support rows there, so (4.3)-(4.4) is the query == support case. Z are the model's
    prepared inputs (``model.prepare(X)``, or X itself). float64/int64, C-contiguous.
    """

    Zs: np.ndarray
    ys: np.ndarray
    offs: np.ndarray
    Zq: np.ndarray
    yq: np.ndarray
    offq: np.ndarray

    @property
    def n_tasks(self) -> int:
        return self.offs.shape[0] - 1


def _offsets(counts: list[int]) -> np.ndarray:
    offs = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=offs[1:])
    return offs


class MetaSL:
    """MAML for supervised learning, (4.3)-(4.5), with an exact second-order meta-gradient.

    Parameters
    ----------
    tasks : sequence of SLTask
        The subtasks; they may have different sample counts but must share the input
        dimension. They are validated and packed once, here (concatenated arrays plus
        offsets), so every ``objective``/``gradient`` call is a single compiled call.
    model : Predictor
        The hypothesis class: :class:`fastmeta.LinearModel`, :class:`fastmeta.TwoLayerReLU`,
        :class:`fastmeta.MLP`, or any object following the predictor protocol of
        :mod:`fastmeta.models.protocol`.
    loss : {"squared", "logistic"}, default "squared"
        ``"squared"``: l = (h - y)^2 / 2. ``"logistic"``: cross-entropy of sigmoid(h)
        against y in {0, 1}, l = log(1 + e^h) - y h, evaluated without overflow for large |h|.
    eta : float, default 0.1
        Inner step size (eta >= 0). eta = 0 turns L into the average risk over tasks,
        i.e. joint training ("pretraining") on all tasks.
    first_order : bool, default False
        If True, ``gradient`` returns the first-order MAML approximation
        1/n sum_i grad R_i^q(theta_i), which drops the -eta Hess R_i(theta) term. It is
        NOT the gradient of L; it is offered only for comparison. ``objective`` is unchanged.

    Notes
    -----
    The exact gradient is 1/n sum_i (I - eta Hess R_i(theta)) grad R_i^q(theta_i), with
    Hess R_i(theta) v from the model's ``hvp`` on the support set (never a d x d matrix).
    Models with a compiled ``meta_terms`` (the three built-in ones) run the whole
    objective in one call; any other predictor runs a NumPy loop over tasks. Results do
    not depend on the number of Numba threads.

    Examples
    --------
    >>> import fastmeta
    >>> from fastmeta.tasks import linear_gaussian_tasks
    >>> tasks = linear_gaussian_tasks(8, n_support=10, in_dim=3, seed=0)
    >>> meta = fastmeta.MetaSL(tasks, fastmeta.LinearModel(), eta=0.1)
    >>> theta = meta.init_params()
    >>> L, grad = meta.value_and_grad(theta)
    >>> grad.shape
    (3,)
    >>> result = meta.fit(theta, steps=20, lr=0.5, progress=False)
    >>> bool(meta.objective(result.theta) < L)
    True
    >>> meta.predict(result.theta, tasks[0].X).shape
    (10,)
    """

    def __init__(self, tasks: Sequence[SLTask] | SLTask, model: Predictor,
                 loss: str = "squared", eta: float = 0.1, first_order: bool = False) -> None:
        owner = "MetaSL"
        self.loss = check_choice(loss, "loss", _LOSSES, owner)
        self.eta = check_real_scalar(eta, "eta", owner, low=0.0, low_open=False)
        if not isinstance(first_order, (bool, np.bool_)):
            raise TypeError(f"The 'first_order' parameter of MetaSL must be a bool. Got {first_order!r} instead.")
        self.first_order = bool(first_order)
        self._loss_code = _LOSS_CODE[self.loss]
        tasks = self._check_tasks(tasks, owner)
        self.in_dim = tasks[0].in_dim
        self.model = self._check_model(model, self.in_dim, owner)
        self.n_params = int(self.model.n_params)
        self._prepare = getattr(self.model, "prepare", None)
        self._meta_terms = getattr(self.model, "meta_terms", None)
        self._project = self.model.project
        self.tasks = tasks
        self.n_tasks = len(tasks)
        self._packed = self.pack(tasks)
        self._grad_mode = _ksl.MODE_FIRST_ORDER if self.first_order else _ksl.MODE_EXACT
        self._tag: dict[str, str] | None = None

    def __repr__(self) -> str:
        return (f"MetaSL(n_tasks={self.n_tasks}, model={self.model!r}, loss={self.loss!r}, "
                f"eta={self.eta}, first_order={self.first_order})")

    # -- the meta-objective ----------------------------------------------------------
    def init_params(self) -> np.ndarray:
        """The model's initial parameters (zeros for LinearModel, W(0) for the networks)."""
        return np.asarray(self.model.init_params(), dtype=np.float64)

    @renamed_keyword("params", "theta")
    def objective(self, theta: Any) -> float:
        """L(theta) of (4.4): the mean over tasks of the query risk after one inner step."""
        theta = self._check_params(theta, "MetaSL.objective")
        return self._run(theta, self._packed, _ksl.MODE_VALUE)[0]

    @renamed_keyword("params", "theta")
    def gradient(self, theta: Any) -> np.ndarray:
        """grad L(theta), exact (or the first-order approximation if ``first_order``)."""
        theta = self._check_params(theta, "MetaSL.gradient")
        return self._run(theta, self._packed, self._grad_mode)[1]

    @renamed_keyword("params", "theta")
    def value_and_grad(self, theta: Any) -> tuple[float, np.ndarray]:
        """(L(theta), grad L(theta)) from one compiled call."""
        theta = self._check_params(theta, "MetaSL.value_and_grad")
        return self._run(theta, self._packed, self._grad_mode)

    def pack(self, tasks: Sequence[SLTask] | SLTask | TaskBatch) -> PackedTasks:
        """Validate ``tasks`` (SLTask objects or a TaskBatch) against this problem and pack them.

        ``fit(sampler=...)`` calls this on every step's fresh tasks; ``value_and_grad_on``
        takes the result.
        """
        owner = "MetaSL.pack"
        if isinstance(tasks, TaskBatch):
            return self._pack_batch(tasks, owner)
        tasks = self._check_tasks(tasks, owner)
        for i, task in enumerate(tasks):
            if task.in_dim != self.in_dim:
                raise ValueError(f"The 'tasks' parameter of {owner} must hold tasks of input dimension "
                                 f"{self.in_dim}. Got in_dim={task.in_dim} at position {i} instead.")
            if self.loss == "logistic":
                for name, y in (("y", task.y), ("y_query", task.y_query)):
                    self._check_labels(y, f"tasks[{i}].{name}", owner)
        sup = [self._inputs(t.X) for t in tasks]
        Zs = np.ascontiguousarray(np.concatenate(sup)) if len(sup) > 1 else sup[0]
        ys = np.ascontiguousarray(np.concatenate([t.y for t in tasks]))
        offs = _offsets([t.X.shape[0] for t in tasks])
        if any(t.has_query for t in tasks):
            Zq = np.ascontiguousarray(np.concatenate(
                [self._inputs(t.X_query) if t.has_query else z for t, z in zip(tasks, sup)]))
            yq = np.ascontiguousarray(np.concatenate([t.split("query")[1] for t in tasks]))
            offq = _offsets([t.split("query")[0].shape[0] for t in tasks])
        else:
            Zq, yq, offq = Zs, ys, offs
        return PackedTasks(Zs, ys, offs, Zq, yq, offq)

    def _pack_batch(self, batch: TaskBatch, owner: str) -> PackedTasks:
        if batch.in_dim != self.in_dim:
            raise ValueError(f"The 'tasks' parameter of {owner} must hold tasks of input dimension "
                             f"{self.in_dim}. Got a TaskBatch of in_dim={batch.in_dim} instead.")
        n, k, p = batch.X.shape
        Zs = self._inputs(batch.X.reshape(n * k, p))
        ys = batch.y.reshape(n * k)
        offs = np.arange(0, n * k + 1, k, dtype=np.int64)
        if batch.X_query is None:
            Zq, yq, offq = Zs, ys, offs
        else:
            kq = batch.X_query.shape[1]
            Zq = self._inputs(batch.X_query.reshape(n * kq, p))
            yq = batch.y_query.reshape(n * kq)
            offq = np.arange(0, n * kq + 1, kq, dtype=np.int64)
        if self.loss == "logistic":
            self._check_labels(ys, "tasks.y (flattened)", owner)
            self._check_labels(yq, "tasks.y_query (flattened)", owner)
        return PackedTasks(Zs, ys, offs, Zq, yq, offq)

    def value_and_grad_on(self, theta: Any, packed: PackedTasks) -> tuple[float, np.ndarray]:
        """(L, grad L) at ``theta`` over other tasks, packed by ``pack`` (same model and settings)."""
        if not isinstance(packed, PackedTasks):
            raise TypeError("The 'packed' parameter of MetaSL.value_and_grad_on must be a PackedTasks "
                            f"(from MetaSL.pack). Got {type(packed).__name__} instead.")
        theta = self._check_params(theta, "MetaSL.value_and_grad_on")
        return self._run(theta, packed, self._grad_mode)

    def fit(self, theta0: Any = None, *, steps: int = 100, lr: StepSize = 0.1, tol: float = 0.0,
            checkpoint: Any = None, checkpoint_every: int = 1, resume: Any = False, overwrite: bool = False,
            progress: bool = True, optimizer: str = "gd", label: str | None = None,
            sampler: SamplerFn | None = None, seed: int = 0) -> FitResult:
        """Meta-train by gradient descent (4.5): theta <- Proj(theta - alpha_l grad L(theta)).

        Parameters
        ----------
        theta0 : array_like, optional
            Starting point; ``init_params()`` by default. Part of the checkpoint's
            identity: a resumed run must be given the same theta0 (or none).
        steps : int, default 100
            Total number of updates, counting those of a resumed run (at least the
            number the checkpoint holds).
        lr : float, str, callable or (str, callable), default 0.1
            Step size alpha_l: a constant, ``"sqrt:a"`` (a / sqrt(l + 1)), ``"inv:a"``
            (a / (l + 1)), or a function of l; with checkpoints a function must be
            named, ``lr=("my-schedule", fn)`` (or carry a ``name`` attribute).
        tol : float, default 0.0
            Stop when ||grad L||_2 <= tol (epsilon-stationarity); see ``converged``.
        checkpoint : path, optional
            Write theta and the history there every ``checkpoint_every`` steps and at
            the end. The folder must exist and be writable.
        resume : bool or path, default False
            Continue bit for bit from ``checkpoint`` (True) or from the given file. A
            checkpoint of a different problem or settings is refused, naming what differs.
        overwrite : bool, default False
            Replace an existing ``checkpoint`` file when not resuming it.
        progress : bool, default True
            Show progress on stderr (a bar on a terminal, plain lines in logs).
        optimizer : {"gd", "adam"}, default "gd"
            "gd" is (4.5) exactly; "adam" rescales the exact meta-gradient by Adam's
            moments (as Finn et al. train MAML); its state is checkpointed too.
        label : str, optional
            Name shown with the progress output; default "MetaSL.fit".
        sampler : callable, optional
            Fresh tasks every step (Finn et al.'s protocol): step l calls
            ``sampler(numpy.random.default_rng([seed, l]), l)`` and takes the meta-gradient
            over the tasks it returns (a list of SLTask or a :class:`TaskBatch`), instead
            of over ``self.tasks``. The families of
            :mod:`fastmeta.tasks` provide samplers (e.g. ``sinusoid_sampler``). Because
            step l's Generator is a function of (seed, l), a resumed run draws exactly
            the tasks the uninterrupted run would have drawn.
        seed : int, default 0
            Seed of the sampler's stream (unused without a sampler).

        Returns
        -------
        FitResult
            ``theta``, ``objective`` and ``grad_norm`` at theta_0..theta_T (with a sampler,
            L and grad L of each step's own batch), ``steps``, ``converged``.
        """
        theta0 = self.init_params() if theta0 is None else self._check_params(theta0, "MetaSL.fit", "theta0")
        kernels = getattr(self.model, "compiled_kernels", ())
        common = dict(steps=steps, lr=lr, maximize=False, tol=tol, project=self._project,
                      checkpoint=checkpoint, checkpoint_every=checkpoint_every, resume=resume,
                      overwrite=overwrite, progress=progress, optimizer=optimizer, owner="MetaSL.fit",
                      label=label, compiling=lambda: needs_compiling(*kernels))
        if sampler is None:
            return run_gradient_method(self.value_and_grad, theta0, tag=self.tag_components, **common)
        value_and_grad, tag = self._sampled(sampler, seed, "MetaSL.fit")
        return run_gradient_method(value_and_grad, theta0, tag=tag, step_aware=True, **common)

    @property
    def tag(self) -> str:
        """A digest of :meth:`tag_components`: equal exactly when the problem and settings are."""
        return array_digest(*sorted(self.tag_components().items()))

    def tag_components(self) -> dict[str, str]:
        """What identifies the problem and settings in a checkpoint (``fit`` adds lr, optimizer, theta0)."""
        if self._tag is None:
            p = self._packed
            self._tag = {**self._settings_tag(), "n_tasks": str(self.n_tasks),
                         "support data": digest(np.concatenate([p.Zs.ravel(), p.ys])),
                         "support sizes": digest(p.offs),
                         "query data": digest(np.concatenate([p.Zq.ravel(), p.yq])),
                         "query sizes": digest(p.offq)}
        return dict(self._tag)

    def predict(self, theta: Any, X: Any) -> np.ndarray:
        """The model's outputs h_theta(x) for the rows x of ``X``, shape (N,).

        ``X`` has shape (N, in_dim), raw inputs as in :class:`SLTask` (a LinearModel
        applies its feature map). For the logistic loss these are logits; the
        probability of label 1 is 1 / (1 + exp(-h)).
        """
        theta = self._check_params(theta, "MetaSL.predict")
        X = as_float_array(X, "X", "MetaSL.predict", shape=(None, self.in_dim))
        return self.model.predict(theta, self._inputs(X))

    # -- single-task tools: adaptation, risks, Hessian-vector products ----------------
    @renamed_keyword("params", "theta")
    def adapt(self, theta: Any, task: SLTask, steps: int = 1, eta: float | None = None,
              return_path: bool = False) -> np.ndarray:
        """Run ``steps`` inner gradient steps theta <- theta - eta grad R(theta) on ``task``'s support set.

        Parameters
        ----------
        theta : array_like
            Starting parameters (typically the meta-trained theta).
        task : SLTask
            A (new) task; only its support set is used.
        steps : int, default 1
            Number k >= 0 of inner steps.
        eta : float, optional
            Step size; ``self.eta`` by default.
        return_path : bool, default False
            Return every iterate, shape (steps + 1, n_params), instead of the last one,
            so one call gives the parameters after 0, 1, ..., k steps.

        Returns
        -------
        ndarray of shape (n_params,) or (steps + 1, n_params)
        """
        owner = "MetaSL.adapt"
        theta = self._check_params(theta, owner).copy()
        steps = check_int(steps, "steps", owner, low=0)
        eta = self.eta if eta is None else check_real_scalar(eta, "eta", owner, low=0.0, low_open=False)
        Z, y = self._task_data(task, "support", owner)
        path = [theta.copy()] if return_path else None
        for _ in range(steps):
            theta = theta - eta * self._risk_parts(theta, Z, y, need_grad=True)[1]
            if path is not None:
                path.append(theta)
        return np.stack(path) if path is not None else theta

    @renamed_keyword("params", "theta")
    def risk(self, theta: Any, task: SLTask, split: str = "query") -> float:
        """R(theta) = mean loss of the model on ``task``'s ``split`` set (support if it has no query set)."""
        theta = self._check_params(theta, "MetaSL.risk")
        Z, y = self._task_data(task, split, "MetaSL.risk")
        return self._risk_parts(theta, Z, y, need_grad=False)[0]

    @renamed_keyword("params", "theta")
    def risk_grad(self, theta: Any, task: SLTask, split: str = "support") -> np.ndarray:
        """grad R(theta) on ``task``'s ``split`` set."""
        theta = self._check_params(theta, "MetaSL.risk_grad")
        Z, y = self._task_data(task, split, "MetaSL.risk_grad")
        return self._risk_parts(theta, Z, y, need_grad=True)[1]

    @renamed_keyword("params", "theta")
    def risk_hvp(self, theta: Any, task: SLTask, v: Any, split: str = "support") -> np.ndarray:
        """Hess R(theta) v on ``task``'s ``split`` set, from the model's ``hvp``.

        For the linear model and the one-layer-trained ReLU network this is the
        Gauss-Newton product J^T diag(l''/N) J v, which is their exact Hessian (for ReLU
        away from the kinks); the MLP adds its curvature term (R-operator).
        """
        owner = "MetaSL.risk_hvp"
        theta = self._check_params(theta, owner)
        v = as_float_array(v, "v", owner, shape=(self.n_params,))
        Z, y = self._task_data(task, split, owner)
        _, d1, d2 = self._loss_terms(self.model.predict(theta, Z), y)
        n = Z.shape[0]
        return self.model.hvp(theta, Z, v, d1 / n, d2 / n)

    # -- internals ----------------------------------------------------------------------
    def _settings_tag(self) -> dict[str, str]:
        return {"problem": "MetaSL", "model": self.model.config(), "loss": self.loss,
                "eta": repr(self.eta), "first_order": str(self.first_order)}

    def _sampled(self, sampler: Any, seed: Any, owner: str):
        """(value_and_grad(theta, step) over step's fresh tasks, checkpoint tag) for ``fit``."""
        if not callable(sampler):
            raise TypeError(f"The 'sampler' parameter of {owner} must be a callable (rng, step) -> tasks. "
                            f"Got {type(sampler).__name__} instead.")
        seed = check_int(seed, "seed", owner, low=0)
        describe = getattr(sampler, "config", None)
        name = describe() if callable(describe) else getattr(sampler, "__qualname__", type(sampler).__name__)

        def value_and_grad(theta: np.ndarray, step: int) -> tuple[float, np.ndarray]:
            packed = self.pack(sampler(np.random.default_rng([seed, step]), step))
            return self._run(theta, packed, self._grad_mode)

        return value_and_grad, {**self._settings_tag(), "sampler": str(name), "seed": str(seed)}

    def _run(self, theta: np.ndarray, packed: PackedTasks, mode: int) -> tuple[float, np.ndarray | None]:
        task_loss = np.empty(packed.n_tasks)
        if self._meta_terms is not None:
            grad = self._meta_terms(theta, packed, self.eta, self._loss_code, mode, task_loss)
        else:
            grad = self._run_generic(theta, packed, mode, task_loss)
        value = float(task_loss.sum()) / packed.n_tasks
        check_computed_finite(value, "the meta-objective L", "MetaSL", _OVERFLOW_HINT)
        if grad is not None:
            check_computed_finite(grad, "the meta-gradient", "MetaSL", _OVERFLOW_HINT)
        return value, grad

    def _run_generic(self, theta: np.ndarray, p: PackedTasks, mode: int,
                     task_loss: np.ndarray) -> np.ndarray | None:
        """The meta-objective through predict / vjp / hvp, one task at a time (user predictors)."""
        model, eta = self.model, self.eta
        grad = np.zeros(theta.shape[0]) if mode != _ksl.MODE_VALUE else None
        for i in range(p.n_tasks):
            Zs, ys = p.Zs[p.offs[i]:p.offs[i + 1]], p.ys[p.offs[i]:p.offs[i + 1]]
            Zq, yq = p.Zq[p.offq[i]:p.offq[i + 1]], p.yq[p.offq[i]:p.offq[i + 1]]
            _, d1, d2 = self._loss_terms(model.predict(theta, Zs), ys)
            ns, nq = Zs.shape[0], Zq.shape[0]
            theta_i = theta - eta * model.vjp(theta, Zs, d1 / ns)
            values, d1q, _ = self._loss_terms(model.predict(theta_i, Zq), yq)
            task_loss[i] = values.mean()
            if mode == _ksl.MODE_VALUE:
                continue
            v = model.vjp(theta_i, Zq, d1q / nq)
            if mode == _ksl.MODE_EXACT:
                v = v - eta * model.hvp(theta, Zs, v, d1 / ns, d2 / ns)
            grad += v
        return grad / p.n_tasks if grad is not None else None

    @staticmethod
    def _check_tasks(tasks: Any, owner: str) -> list[SLTask]:
        tasks = check_nonempty_list(tasks, "tasks", owner)
        for i, task in enumerate(tasks):
            if not isinstance(task, SLTask):
                raise TypeError(f"The 'tasks' parameter of {owner} must hold SLTask objects. "
                                f"Got {type(task).__name__} at position {i} instead.")
        in_dim = tasks[0].in_dim
        for i, task in enumerate(tasks):
            if task.in_dim != in_dim:
                raise ValueError(f"The 'tasks' parameter of {owner} must hold tasks of one input dimension. "
                                 f"Got in_dim={task.in_dim} at position {i}, but {in_dim} at position 0.")
        return tasks

    def _check_model(self, model: Any, in_dim: int, owner: str) -> Predictor:
        bind = getattr(model, "bind", None)
        if callable(bind) and getattr(model, "in_dim", None) is None:
            model = bind(in_dim)
        missing = [name for name in _PROTOCOL if not hasattr(model, name)]
        if missing:
            raise TypeError(f"The 'model' parameter of {owner} must follow the predictor protocol "
                            f"(fastmeta.models.Predictor). Got {type(model).__name__}, which lacks "
                            f"{', '.join(missing)}.")
        if model.in_dim != in_dim:
            raise ValueError(f"The 'model' parameter of {owner} must take inputs of the tasks' dimension "
                             f"{in_dim}. Got {model!r} with in_dim={model.in_dim} instead.")
        return model

    def _check_params(self, params: Any, owner: str, name: str = "theta") -> np.ndarray:
        return as_float_array(params, name, owner, shape=(self.n_params,),
                              shape_text=f"(n_params,) = ({self.n_params},)")

    def _check_labels(self, y: np.ndarray | None, name: str, owner: str) -> None:
        if y is None:
            return
        bad = np.flatnonzero((y != 0.0) & (y != 1.0))
        if bad.size:
            raise ValueError(f"The 'tasks' parameter of {owner} must hold labels in {{0, 1}} for "
                             f"loss='logistic'. Got {name}[{bad[0]}] = {y[bad[0]]!r} instead.")

    def _inputs(self, X: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(self._prepare(X) if self._prepare is not None else X, dtype=np.float64)

    def _task_data(self, task: Any, split: str, owner: str) -> tuple[np.ndarray, np.ndarray]:
        if not isinstance(task, SLTask):
            raise TypeError(f"The 'task' parameter of {owner} must be an SLTask. "
                            f"Got {type(task).__name__} instead.")
        if task.in_dim != self.in_dim:
            raise ValueError(f"The 'task' parameter of {owner} must have inputs of dimension {self.in_dim}. "
                             f"Got in_dim={task.in_dim} instead.")
        X, y = task.split(check_choice(split, "split", ("support", "query"), owner))
        if self.loss == "logistic":
            self._check_labels(y, f"task.{'y' if X is task.X else 'y_query'}", owner)
        return self._inputs(X), y

    def _loss_terms(self, h: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        h = np.ascontiguousarray(h, dtype=np.float64)
        values, d1, d2 = np.empty_like(h), np.empty_like(h), np.empty_like(h)
        _ksl.risk_terms(h, y, self._loss_code, values, d1, d2)
        return values, d1, d2

    def _risk_parts(self, theta: np.ndarray, Z: np.ndarray, y: np.ndarray,
                    need_grad: bool) -> tuple[float, np.ndarray | None]:
        values, d1, _ = self._loss_terms(self.model.predict(theta, Z), y)
        grad = self.model.vjp(theta, Z, d1 / Z.shape[0]) if need_grad else None
        return float(values.mean()), grad
