"""What a user would write without fastmeta: the same exact meta-RL objective and gradient.

* :mod:`.scipy_rl` -- plain NumPy/SciPy, adjoint form (docs/formulas.md section 3), dense LU for
  small S and SuperLU (``splu``) for sparse kernels.
* :mod:`.jax_rl`, :mod:`.torch_rl` -- the meta-objective written densely and differentiated
  by reverse-mode autodiff (jax / torch are imported lazily, only when used).

All baselines take the problem as :func:`problem_arrays` returns it, so they never see
fastmeta objects inside the timed region.
"""
from __future__ import annotations

import numpy as np


def problem_arrays(tasks, phi):
    """Plain arrays of a list of ``fastmeta.TabularMDP`` and features phi (S, A, d).

    Returns ``dict(P=[CSR (S*A, S)], r=[(S, A)], gamma=[float], init=[(S,)], phi=(S, A, d))``;
    tasks that share one kernel object share it here too.
    """
    return dict(P=[t.P for t in tasks], r=[np.asarray(t.r) for t in tasks],
                gamma=[float(t.gamma) for t in tasks], init=[np.asarray(t.init) for t in tasks],
                phi=np.ascontiguousarray(phi, dtype=np.float64))
