"""Batched nonlinear least squares: many independent problems, some sharing a block of parameters.

Row b of a batch has its own parameters `local[b]` (L,) and uses the shared parameters `shared[index[b]]` (K,)
(a subject's β); rows with the same index form one problem. The residuals of all rows come from one batched
call. Three methods:
  "lm":    Levenberg-Marquardt with a damping per problem; the Jacobian comes from forward-mode autodiff (one
           jvp per free parameter column, for all rows at once; a few residuals made of operations torch has no
           forward mode for, such as grid_sample and cdist, by reverse mode: one vjp per residual column) and the
           shared block is solved by the Schur complement, as in bundle adjustment, so a problem's cost grows
           linearly with its rows;
  "lbfgs": torch's L-BFGS on the summed cost (one line search for the whole batch);
  "adam":  Adam on the summed cost with the learning rate decayed 100x over the stage.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.func import jvp

METHODS = ("lm", "lbfgs", "adam")
_LAMBDA0, _LAMBDA_MIN, _LAMBDA_MAX = 1e-3, 1e-10, 1e10
# a problem is also done when its cost fell below _ATOL of where the stage started (float32 round-off), or when
# its steps keep failing
_ATOL, _LAMBDA_DONE = 1e-9, 1e6


@dataclass
class Problem:
    """residuals(local (B, L), shared_rows (B, K)) -> (named residual blocks (B, n_i), shown); the cost of a row
    is the sum of squares of its blocks. `shown` holds (B, ...) tensors for the log: 'error' (B,) goes into the
    record, the rest (the model's parameters) to the log's pictures. `reverse(local, shared_rows)` gives more
    blocks, which LM differentiates in reverse mode (keep them to a few columns). Row b's residuals may depend
    on row b's parameters only."""
    residuals: Callable[[torch.Tensor, torch.Tensor], tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]]
    index: torch.Tensor  # (B,) row of `shared` used by each row
    n_shared: int
    reverse: Callable[[torch.Tensor, torch.Tensor], dict[str, torch.Tensor]] | None = None

    def evaluate(self, local: torch.Tensor, shared_rows: torch.Tensor):
        """All residual blocks (forward ones first) and what is shown."""
        blocks, shown = self.residuals(local, shared_rows)
        return ({**blocks, **self.reverse(local, shared_rows)} if self.reverse else blocks), shown


def solve(problem: Problem, local: torch.Tensor, shared: torch.Tensor, iters: int, free_local: torch.Tensor,
          free_shared: bool, method: str = "lm", lr: float = 1.0, history_size: int = 20, tolerance: float = 1e-6,
          record: list | None = None, stage: str = "", log=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimise the summed cost over the free columns of `local` (mask (L,)) and, if free_shared, `shared`;
    returns the new (local, shared). Appends one entry per cost evaluation to `record`. LM stops early once
    every problem is done: its undamped step promises less than `tolerance` of its cost."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    record = [] if record is None else record
    if iters > 0:
        step = {"lm": _levenberg_marquardt, "lbfgs": _torch_optimizer, "adam": _torch_optimizer}[method]
        local, shared = step(problem, local.detach(), shared.detach(), iters, free_local, free_shared, method, lr,
                             history_size, tolerance, _Recorder(record, stage, log))
        if log is not None:
            log.stage_end(stage)
    return local.detach(), shared.detach()


class _Recorder:
    def __init__(self, record: list, stage: str, log):
        self.record, self.stage, self.log = record, stage, log

    def __call__(self, blocks: dict[str, torch.Tensor], shown: dict[str, torch.Tensor]) -> None:
        costs = {k: v.detach().square().sum(1) for k, v in blocks.items()}
        entry = {"stage": self.stage, "step": len(self.record), "loss": float(sum(costs.values()).mean()),
                 **{k: float(c.mean()) for k, c in costs.items()}}
        if "error" in shown:
            entry["error"] = float(shown["error"].mean())
        self.record.append(entry)
        if self.log is not None:
            self.log.step(entry, {k: v.detach() for k, v in shown.items() if k != "error"})


def _stack(blocks: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat(list(blocks.values()), dim=1)


def _levenberg_marquardt(problem, local, shared, iters, free_local, free_shared, method, lr, history_size, tolerance,
                         note):
    index, S = problem.index, problem.n_shared
    cols = free_local.nonzero().flatten().tolist()
    lam = local.new_full((S,), _LAMBDA0, dtype=torch.float64)

    def residual_vector(loc, sh_rows):
        return _stack(problem.residuals(loc, sh_rows)[0])

    def reverse_vector(loc, sh_rows):
        return _stack(problem.reverse(loc, sh_rows))

    def per_problem(x_rows):  # (B, ...) summed into (S, ...)
        return x_rows.new_zeros((S, *x_rows.shape[1:])).index_add_(0, index, x_rows)

    blocks, shown = problem.evaluate(local, shared[index])
    note(blocks, shown)
    cost = per_problem(_stack(blocks).square().sum(1).double())
    floor = _ATOL * cost
    done = torch.zeros(S, dtype=torch.bool)
    for _ in range(iters):
        if done.all():
            break
        r, J_l, J_s = _jacobian(residual_vector, local, shared[index], cols, free_shared)
        if problem.reverse is not None:
            more = _jacobian_reverse(reverse_vector, local, shared[index], cols, free_shared)
            r, J_l = torch.cat([r, more[0]], 1), torch.cat([J_l, more[1]], 1)
            J_s = torch.cat([J_s, more[2]], 1) if free_shared else None
        r, J_l = r.double(), J_l.double()
        A = J_l.transpose(1, 2) @ J_l                             # (B, nl, nl)
        g_l = (J_l.transpose(1, 2) @ r[..., None])[..., 0]        # (B, nl)
        A = _damp(A, lam[index])
        d_local = local.new_zeros(local.shape, dtype=torch.float64)
        if free_shared:
            J_s = J_s.double()
            Bm = J_l.transpose(1, 2) @ J_s                        # (B, nl, K)
            C = _damp(per_problem(J_s.transpose(1, 2) @ J_s), lam)  # (S, K, K)
            g_s = per_problem((J_s.transpose(1, 2) @ r[..., None])[..., 0])
            Ainv_B = torch.linalg.solve(A, Bm)
            Ainv_g = torch.linalg.solve(A, g_l)
            schur = C - per_problem(Bm.transpose(1, 2) @ Ainv_B)
            rhs = -g_s + per_problem((Bm.transpose(1, 2) @ Ainv_g[..., None])[..., 0])
            d_shared = torch.linalg.solve(schur, rhs)             # (S, K)
            d_free = -(Ainv_g + (Ainv_B @ d_shared[index][..., None])[..., 0])
        else:
            d_shared = shared.new_zeros(shared.shape, dtype=torch.float64)
            d_free = -torch.linalg.solve(A, g_l)
        if cols:
            d_local[:, cols] = d_free
        step = (J_l @ d_free[..., None])[..., 0] + ((J_s @ d_shared[index][..., None])[..., 0] if free_shared else 0)
        predicted = cost - per_problem((r + step).square().sum(1))  # the decrease the linear model expects
        trial_local, trial_shared = local + d_local.to(local), shared + d_shared.to(shared)
        with torch.no_grad():
            trial_blocks, trial_shown = problem.evaluate(trial_local, trial_shared[index])
        trial_cost = per_problem(_stack(trial_blocks).square().sum(1).double())
        better = trial_cost < cost
        done = ((predicted <= tolerance * cost) & (lam <= 1)) | (cost <= floor) | (lam >= _LAMBDA_DONE)
        rows = better[index]
        local = torch.where(rows[:, None], trial_local, local)
        shared = torch.where(better[:, None], trial_shared, shared)
        cost = torch.where(better, trial_cost, cost)
        lam = torch.where(better, lam / 3, lam * 4).clamp(_LAMBDA_MIN, _LAMBDA_MAX)
        blocks = {k: torch.where(rows[:, None], trial_blocks[k], v) for k, v in blocks.items()}
        shown = {k: torch.where(rows.view(-1, *[1] * (v.ndim - 1)), trial_shown[k], v) for k, v in shown.items()}
        note(blocks, shown)
    return local, shared


def _jacobian(fn: Callable, local: torch.Tensor, shared_rows: torch.Tensor, cols: list[int], free_shared: bool,
              budget: int = 2 ** 23):
    """Residuals r (B, R) and their derivatives (B, R, len(cols)) by local columns `cols` and (B, R, K) by the
    shared parameters of each row (None when not free): one jvp per column for all rows at once, vectorised
    over as many columns as keep (columns x residuals) under `budget` numbers."""
    K = shared_rows.shape[1]
    n = len(cols) + (K if free_shared else 0)
    t_local = local.new_zeros(n, *local.shape)
    t_shared = shared_rows.new_zeros(n, *shared_rows.shape)
    for i, c in enumerate(cols):
        t_local[i, :, c] = 1
    if free_shared:
        for c in range(K):
            t_shared[len(cols) + c, :, c] = 1
    with torch.no_grad():
        r = fn(local, shared_rows)
    chunk = max(1, min(n, budget // r.numel()))
    column = torch.func.vmap(lambda tl, ts: jvp(fn, (local, shared_rows), (tl, ts))[1], chunk_size=chunk)
    J = column(t_local, t_shared).permute(1, 2, 0) if n else r.new_zeros(*r.shape, 0)  # (B, R, n)
    return r, J[..., :len(cols)], (J[..., len(cols):] if free_shared else None)


def _jacobian_reverse(fn: Callable, local: torch.Tensor, shared_rows: torch.Tensor, cols: list[int],
                      free_shared: bool):
    """As `_jacobian`, by reverse mode: rows are independent, so the vjp of residual column k (a one in column k
    of every row) gives row b's derivatives of its own residual k; one vjp per residual column, vectorised."""
    r, pull = torch.func.vjp(fn, local, shared_rows)
    R = r.shape[1]
    ones = torch.eye(R, dtype=r.dtype)[:, None].expand(R, *r.shape)
    d_local, d_shared = torch.func.vmap(pull)(ones)       # (R, B, L), (R, B, K)
    J_l = d_local[..., cols].permute(1, 0, 2)             # (B, R, len(cols))
    return r.detach(), J_l, (d_shared.permute(1, 0, 2) if free_shared else None)


def _damp(A: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """A + λ·(diag(A) + 0.01·mean(diag(A))): Marquardt's scaling plus a little of Levenberg's, so that directions
    the residuals barely see (a finger's twist in 2D) cannot take huge steps."""
    diag = torch.diagonal(A, dim1=-2, dim2=-1)
    mean = diag.mean(-1, keepdim=True).clamp_min(1e-30)
    return A + torch.diag_embed(lam[:, None] * (diag + 1e-2 * mean) + 1e-9 * mean)


def _torch_optimizer(problem, local, shared, iters, free_local, free_shared, method, lr, history_size, tolerance,
                     note):
    index = problem.index
    local = local.clone().requires_grad_(True)
    shared = shared.clone().requires_grad_(free_shared)
    mask = free_local.to(local)
    local.register_hook(lambda g: g * mask)
    params = [local] + ([shared] if free_shared else [])

    def evaluate():
        blocks, shown = problem.evaluate(local, shared[index])
        note(blocks, shown)
        return _stack(blocks).square().sum()

    if method == "adam":
        opt = torch.optim.Adam(params, lr=lr)
        decay = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.01 ** (1 / iters))
        for _ in range(iters):
            opt.zero_grad()
            evaluate().backward()
            opt.step()
            decay.step()
    else:
        opt = torch.optim.LBFGS(params, lr=lr, max_iter=iters, history_size=history_size, tolerance_grad=1e-12,
                                tolerance_change=1e-16, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            total = evaluate()
            total.backward()
            return total
        opt.step(closure)
    return local.detach(), shared.detach()
