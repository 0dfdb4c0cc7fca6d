"""KAN sparsity penalties (Liu et al. 2024, arXiv 2404.19756, sec. 2.5.1): one table.

Both penalties score each edge ``(o, i)`` of every layer by a size ``|phi_oi|`` measured on
the batch, then add an L1 term and an entropy term per layer:

    sum_l  lamb_l1 * sum_oi |phi_oi|  +  lamb_entropy * S(p_l),
    p_oi = |phi_oi| / sum_oi |phi_oi|,   S(p) = -sum_oi p_oi log p_oi.

They differ in the edge size (see :data:`PENALTIES`). :meth:`KAN.regularization
<trainkit.kan.model.KAN.regularization>` is the ``paper`` row, which ``kan fit`` uses;
``kan discover`` picks a row with ``sparse.penalty`` (default ``std``). The table is also
in docs/papers.md (a test checks it is current).

``acts`` is what :meth:`KAN.forward_with_acts <trainkit.kan.model.KAN.forward_with_acts>`
returns: one dict per layer with ``input [N, in]`` and ``postacts [N, out, in]``.
Imports nothing heavy: the functions only call tensor methods.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from trainkit.common.errors import UserError
from trainkit.common.markdown import table


def l1_entropy(sizes: list[Any], lamb_l1: float, lamb_entropy: float, eps: float = 1e-12):
    """``sum_l lamb_l1 * sum_oi |phi_oi| + lamb_entropy * S(p_l)`` from per-layer edge sizes.

    Args:
        sizes: one ``[out, in]`` tensor of edge sizes ``|phi_oi|`` per layer.

    Returns:
        a scalar tensor (``0.0`` for no layers).
    """
    total = 0.0
    for size in sizes:
        s = size.sum()
        p = size / (s + eps)
        ent = -(p * (p + eps).log()).sum()
        total = total + lamb_l1 * s + lamb_entropy * ent
    return total


def paper_penalty(
    acts: list[dict[str, Any]], lamb_l1: float = 1.0, lamb_entropy: float = 2.0, eps: float = 1e-12
):
    """The paper's penalty (eqs. 2.17-2.20): ``|phi_oi| = mean_n |phi_oi(x_ni)|``.

    Returns:
        a scalar tensor, ``sum_l lamb_l1 |Phi_l|_1 + lamb_entropy S(Phi_l)``.
    """
    sizes = [a["postacts"].abs().mean(0) for a in acts]  # [out, in] each
    return l1_entropy(sizes, lamb_l1, lamb_entropy, eps)


def std_penalty(
    acts: list[dict[str, Any]], lamb_l1: float = 1.0, lamb_entropy: float = 2.0, eps: float = 1e-12
):
    """pykan 0.2's default penalty (``reg_metric='edge_forward_spline_n'``).

    ``|phi_oi| = std_n phi_oi(x_ni) / (std_n x_ni + 0.1)``: a constant offset of an edge
    costs nothing and the size is relative to the input's spread.

    Returns:
        a scalar tensor, ``sum_l lamb_l1 * sum_oi |phi_oi| + lamb_entropy * S(p)``.
    """
    sizes = [a["postacts"].std(0) / (a["input"].std(0) + 0.1) for a in acts]  # [out, in]
    return l1_entropy(sizes, lamb_l1, lamb_entropy, eps)


@dataclass(frozen=True)
class Penalty:
    """One row of :data:`PENALTIES`.

    Attributes:
        fn: ``(acts, lamb_l1, lamb_entropy) -> scalar tensor``.
        edge_size: how ``|phi_oi|`` is measured on the batch.
        source: where the penalty comes from.
    """

    fn: Callable[..., Any]
    edge_size: str
    source: str


PENALTIES: dict[str, Penalty] = {
    "std": Penalty(
        std_penalty,
        "std over the batch of phi_oi(x_i) / (std of x_i + 0.1)",
        "pykan 0.2 default (reg_metric='edge_forward_spline_n'); prunes [2, 5, 1] to "
        "[2, 1, 1] on exp(sin(pi x) + y^2) for 5 of 5 seeds",
    ),
    "paper": Penalty(
        paper_penalty,
        "mean over the batch of abs(phi_oi(x_i))",
        "Liu et al. 2024, eqs. 2.17-2.20 (KAN.regularization; `kan fit` uses it)",
    ),
}

#: penalty names, in table order (``sparse.penalty`` of ``kan discover``)
NAMES: tuple[str, ...] = tuple(PENALTIES)


def penalty(name: str) -> Penalty:
    """The row of ``name``; a one-line UserError naming the valid ones otherwise."""
    if name not in PENALTIES:
        valid = " or ".join(repr(n) for n in NAMES)
        raise UserError(f"discover: penalty must be {valid}, got {name!r}")
    return PENALTIES[name]


def markdown_table() -> str:
    """:data:`PENALTIES` as Markdown (docs/papers.md holds it verbatim; a test checks it)."""
    return table(
        ["`sparse.penalty`", "size of an edge phi_oi", "source"],
        ([f"`{n}`", p.edge_size, p.source] for n, p in PENALTIES.items()),
    )
