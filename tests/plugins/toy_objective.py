"""A throwaway objective, registered through AUTOPEFT_PLUGINS: the size (L2 norm) of the trained
task head. It shows that an objective is one registry entry plus its measurement."""

from __future__ import annotations

from autopeft.objectives import Objective, register_objective


def _head_norm(trained) -> float:
    model = trained.built.model
    body = {id(p) for p in model.base_model.parameters()}
    squares = sum(float(p.detach().float().pow(2).sum()) for p in model.parameters() if id(p) not in body)
    return squares ** 0.5


register_objective(Objective("head_norm", "min", "toy head norm", limit="max_head_norm", fmt=".3f",
                             measure=_head_norm, help="L2 norm of the trained task head (test plugin)"))
