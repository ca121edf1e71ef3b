"""Meta-supervised learning (paper section 4): SLTask and MetaSL.

For tasks i = 1..n with support data (X_i, y_i) and query data (X_i^q, y_i^q),
a model h_theta and a loss l,

    R_i(theta)   = 1/N_i sum_j l(h_theta(x_ij), y_ij)                 (risk: mean over samples)
    theta_i      = theta - eta grad R_i(theta)                         (4.3), on the support set
    L(theta)     = 1/n sum_i R_i^q(theta_i)                            (4.4), on the query set
    grad L       = 1/n sum_i (I - eta Hess R_i(theta)) grad R_i^q(theta_i)

Without a query set R_i^q = R_i, which is exactly (4.3)-(4.4) (read A_theta(D_i, l, H)
in (4.4); the paper prints R for l). The meta-gradient is the exact second-order one,
computed with Hessian-vector products H v = J^T diag(l''/N) J v (Gauss-Newton form;
J = d h / d theta on the support set): never a d x d Hessian. For a linear model the
Gauss-Newton form is the exact Hessian. For a two-layer ReLU network the exact Hessian
has the extra term 1/N sum_j l'(h_j) d^2 h_j / dW^2, which is zero almost everywhere
because the network is piecewise linear in W; so the product is exact away from kinks.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ._kernels import sl as _ksl
from ._kernels import relu as _krelu
from ._deprecation import renamed_keyword
from ._fingerprint import array_digest
from ._kernels._config import needs_compiling
from ._optim import FitResult, StepSize, digest, run_gradient_method
from ._validation import (as_float_array, check_choice, check_computed_finite, check_finite, check_int,
                          check_nonempty_list, check_real_scalar)
from .linear_model import LinearModel
from .neural import TwoLayerReLU

_LOSSES = ("squared", "logistic")
_LOSS_CODE = {"squared": _ksl.SQUARED, "logistic": _ksl.LOGISTIC}
# Below this many multiply-adds per inner pass (samples x parameters) the linear kernel
# runs serially: waking a thread pool costs more than the work (n=32, d=64 is ~20k).
_LINEAR_PARALLEL_WORK = 200_000
_OVERFLOW_HINT = ("Its exact value is beyond float64 at these parameters (the loss grows like (X theta - y)^2, "
                  "and the inner step like eta |X|^2): rescale X and y, or lower eta.")


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


class MetaSL:
    """MAML for supervised learning, (4.3)-(4.5), with an exact second-order meta-gradient.

    Parameters
    ----------
    tasks : sequence of SLTask
        The subtasks; they may have different sample counts but must share the input
        dimension. They are validated and packed once, here (concatenated arrays plus
        offsets), so every ``objective``/``gradient`` call is a single compiled call.
    model : LinearModel or TwoLayerReLU
        The hypothesis class.
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
    Hess R_i(theta) v = J^T diag(l''/N_i) J v on the support set (never a d x d matrix).
    That product is the exact Hessian for the linear model and, for the ReLU network,
    exact wherever no pre-activation is exactly zero (the network is piecewise linear in W,
    so the term sum_j l'(h_j) d^2 h_j/dW^2 vanishes there). Results do not depend on the
    number of Numba threads.

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

    def __init__(self, tasks: Sequence[SLTask] | SLTask, model: LinearModel | TwoLayerReLU,
                 loss: str = "squared", eta: float = 0.1, first_order: bool = False) -> None:
        owner = "MetaSL"
        tasks = check_nonempty_list(tasks, "tasks", owner)
        for i, task in enumerate(tasks):
            if not isinstance(task, SLTask):
                raise TypeError(f"The 'tasks' parameter of MetaSL must hold SLTask objects. "
                                f"Got {type(task).__name__} at position {i} instead.")
        if not isinstance(model, (LinearModel, TwoLayerReLU)):
            raise TypeError("The 'model' parameter of MetaSL must be a LinearModel or a TwoLayerReLU. "
                            f"Got {type(model).__name__} instead.")
        self.loss = check_choice(loss, "loss", _LOSSES, owner)
        self.eta = check_real_scalar(eta, "eta", owner, low=0.0, low_open=False)
        if not isinstance(first_order, (bool, np.bool_)):
            raise TypeError(f"The 'first_order' parameter of MetaSL must be a bool. Got {first_order!r} instead.")
        self.first_order = bool(first_order)
        self.model = model
        self.tasks = list(tasks)
        self.n_tasks = len(tasks)

        in_dim = tasks[0].in_dim
        for i, task in enumerate(tasks):
            if task.in_dim != in_dim:
                raise ValueError(f"The 'tasks' parameter of MetaSL must hold tasks of one input dimension. "
                                 f"Got in_dim={task.in_dim} at position {i}, but {in_dim} at position 0.")
        if isinstance(model, TwoLayerReLU) and model.in_dim != in_dim:
            raise ValueError(f"The 'model' parameter of MetaSL must take inputs of the tasks' dimension "
                             f"{in_dim}. Got TwoLayerReLU(in_dim={model.in_dim}) instead.")
        self.in_dim = in_dim
        if self.loss == "logistic":
            for i, task in enumerate(tasks):
                for name, y in (("y", task.y), ("y_query", task.y_query)):
                    self._check_labels(y, f"tasks[{i}].{name}", owner)

        self._linear = isinstance(model, LinearModel)
        self.n_params = model.n_params(in_dim) if self._linear else model.n_params
        self._loss_code = _LOSS_CODE[self.loss]

        # Pack once: support rows of every task, then query rows (the support rows again
        # for tasks without a query set, so (4.3)-(4.4) is the query == support case).
        sup = [self._inputs(t.X) for t in tasks]
        self._Zs = np.ascontiguousarray(np.concatenate(sup))
        self._ys = np.ascontiguousarray(np.concatenate([t.y for t in tasks]))
        self._offs = np.zeros(self.n_tasks + 1, dtype=np.int64)
        np.cumsum([t.X.shape[0] for t in tasks], out=self._offs[1:])
        if any(t.has_query for t in tasks):
            self._Zq = np.ascontiguousarray(np.concatenate(
                [self._inputs(t.X_query) if t.has_query else z for t, z in zip(tasks, sup)]))
            self._yq = np.ascontiguousarray(np.concatenate([t.split("query")[1] for t in tasks]))
            self._offq = np.zeros(self.n_tasks + 1, dtype=np.int64)
            np.cumsum([t.split("query")[0].shape[0] for t in tasks], out=self._offq[1:])
        else:
            self._Zq, self._yq, self._offq = self._Zs, self._ys, self._offs
        if self._linear:
            work = self._Zs.shape[0] * self.n_params
            self._linear_kernel = (_ksl.linear_meta.parallel if work >= _LINEAR_PARALLEL_WORK
                                   else _ksl.linear_meta.serial)
        self._grad_mode = _ksl.MODE_FIRST_ORDER if self.first_order else _ksl.MODE_EXACT
        self._project = None if model.radius is None else model.project
        self._tag: dict[str, str] | None = None

    def __repr__(self) -> str:
        return (f"MetaSL(n_tasks={self.n_tasks}, model={self.model!r}, loss={self.loss!r}, "
                f"eta={self.eta}, first_order={self.first_order})")

    # -- the meta-objective ----------------------------------------------------------
    def init_params(self) -> np.ndarray:
        """The model's initial parameters: zeros for LinearModel, W(0) for TwoLayerReLU."""
        return self.model.init_params(self.in_dim) if self._linear else self.model.init_params()

    @renamed_keyword("params", "theta")
    def objective(self, theta: Any) -> float:
        """L(theta) of (4.4): the mean over tasks of the query risk after one inner step."""
        theta = self._check_params(theta, "MetaSL.objective")
        return self._run(theta, _ksl.MODE_VALUE)[0]

    @renamed_keyword("params", "theta")
    def gradient(self, theta: Any) -> np.ndarray:
        """grad L(theta), exact (or the first-order approximation if ``first_order``)."""
        theta = self._check_params(theta, "MetaSL.gradient")
        return self._run(theta, self._grad_mode)[1]

    @renamed_keyword("params", "theta")
    def value_and_grad(self, theta: Any) -> tuple[float, np.ndarray]:
        """(L(theta), grad L(theta)) from one compiled call."""
        theta = self._check_params(theta, "MetaSL.value_and_grad")
        return self._run(theta, self._grad_mode)

    def fit(self, theta0: Any = None, *, steps: int = 100, lr: StepSize = 0.1, tol: float = 0.0,
            checkpoint: Any = None, checkpoint_every: int = 1, resume: Any = False, overwrite: bool = False,
            progress: bool = True, optimizer: str = "gd", label: str | None = None) -> FitResult:
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

        Returns
        -------
        FitResult
            ``theta``, ``objective`` and ``grad_norm`` at theta_0..theta_T, ``steps``, ``converged``.
        """
        theta0 = self.init_params() if theta0 is None else self._check_params(theta0, "MetaSL.fit", "theta0")
        kernel = self._linear_kernel if self._linear else _krelu.relu_meta
        return run_gradient_method(self.value_and_grad, theta0, steps=steps, lr=lr, maximize=False,
                                   tol=tol, project=self._project, checkpoint=checkpoint,
                                   checkpoint_every=checkpoint_every, resume=resume, overwrite=overwrite,
                                   progress=progress, optimizer=optimizer, tag=self.tag_components,
                                   owner="MetaSL.fit", label=label,
                                   compiling=lambda: needs_compiling(kernel))

    @property
    def tag(self) -> str:
        """A digest of :meth:`tag_components`: equal exactly when the problem and settings are."""
        return array_digest(*sorted(self.tag_components().items()))

    def tag_components(self) -> dict[str, str]:
        """What identifies the problem and settings in a checkpoint (``fit`` adds lr, optimizer, theta0)."""
        if self._tag is None:
            self._tag = {"problem": "MetaSL", "model": self.model.config(), "loss": self.loss,
                         "eta": repr(self.eta), "first_order": str(self.first_order),
                         "n_tasks": str(self.n_tasks),
                         "support data": digest(np.concatenate([self._Zs.ravel(), self._ys])),
                         "support sizes": digest(self._offs),
                         "query data": digest(np.concatenate([self._Zq.ravel(), self._yq])),
                         "query sizes": digest(self._offq)}
        return dict(self._tag)

    def predict(self, theta: Any, X: Any) -> np.ndarray:
        """The model's outputs h_theta(x) for the rows x of ``X``, shape (N,).

        ``X`` has shape (N, in_dim), raw inputs as in :class:`SLTask` (a LinearModel
        applies its feature map). For the logistic loss these are logits; the
        probability of label 1 is 1 / (1 + exp(-h)).
        """
        theta = self._check_params(theta, "MetaSL.predict")
        X = as_float_array(X, "X", "MetaSL.predict", shape=(None, self.in_dim))
        return self._predict(theta, self._inputs(X))

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
        """Gauss-Newton product J^T diag(l''/N) J v of the risk on ``task``'s ``split`` set.

        Equal to Hess R(theta) v for the linear model; for the ReLU network, equal to it
        wherever no pre-activation W_r^T x_j is exactly zero (see the class notes).
        """
        owner = "MetaSL.risk_hvp"
        theta = self._check_params(theta, owner)
        v = as_float_array(v, "v", owner, shape=(self.n_params,))
        Z, y = self._task_data(task, split, owner)
        _, _, d2 = self._loss_terms(self._predict(theta, Z), y)
        return self._vjp(theta, Z, d2 * self._jvp(theta, Z, v) / Z.shape[0])

    # -- internals ----------------------------------------------------------------------
    def _run(self, theta: np.ndarray, mode: int) -> tuple[float, np.ndarray | None]:
        n = self.n_tasks
        task_loss = np.empty(n)
        if self._linear:
            task_grad = np.empty((n, self.n_params))
            self._linear_kernel(theta, self._Zs, self._ys, self._offs, self._Zq, self._yq, self._offq,
                                self.eta, self._loss_code, mode, task_loss, task_grad)
            # numpy sums axis 0 row by row in task order: thread-count independent.
            grad = task_grad.sum(axis=0) / n if mode != _ksl.MODE_VALUE else None
        else:
            m = self.model
            WT = m._WT(theta)
            grad2 = np.empty((m.width, m.in_dim))
            _krelu.relu_meta(WT, m._sb, self._Zs, self._ys, self._offs, self._Zq, self._yq, self._offq,
                             self.eta, self._loss_code, mode, task_loss, grad2)
            grad = grad2.ravel() if mode != _ksl.MODE_VALUE else None
        value = float(task_loss.sum()) / n
        check_computed_finite(value, "the meta-objective L", "MetaSL", _OVERFLOW_HINT)
        if grad is not None:
            check_computed_finite(grad, "the meta-gradient", "MetaSL", _OVERFLOW_HINT)
        return value, grad

    def _check_params(self, params: Any, owner: str, name: str = "theta") -> np.ndarray:
        # Fast path for the common case (the fit loop): no conversion, one finiteness scan.
        if (type(params) is np.ndarray and params.dtype == np.float64 and params.ndim == 1
                and params.shape[0] == self.n_params and params.flags.c_contiguous):
            check_finite(params, name, owner)
            return params
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
        return self.model._transform(X) if self._linear else np.ascontiguousarray(X)

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
        values, d1, d2 = np.empty_like(h), np.empty_like(h), np.empty_like(h)
        _ksl.risk_terms(h, y, self._loss_code, values, d1, d2)
        return values, d1, d2

    def _risk_parts(self, theta: np.ndarray, Z: np.ndarray, y: np.ndarray,
                    need_grad: bool) -> tuple[float, np.ndarray | None]:
        values, d1, _ = self._loss_terms(self._predict(theta, Z), y)
        grad = self._vjp(theta, Z, d1 / Z.shape[0]) if need_grad else None
        return float(values.mean()), grad

    def _predict(self, theta: np.ndarray, Z: np.ndarray) -> np.ndarray:
        if self._linear:
            return Z @ theta
        return self.model._forward(self.model._WT(theta), Z)

    def _vjp(self, theta: np.ndarray, Z: np.ndarray, g: np.ndarray) -> np.ndarray:
        if self._linear:
            return Z.T @ g
        return self.model._vjp(self.model._WT(theta), Z, np.ascontiguousarray(g))

    def _jvp(self, theta: np.ndarray, Z: np.ndarray, v: np.ndarray) -> np.ndarray:
        if self._linear:
            return Z @ v
        return self.model._jvp(self.model._WT(theta), Z, self.model._WT(v))
