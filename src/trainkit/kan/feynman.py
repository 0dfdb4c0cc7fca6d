"""AI-Feynman equations used by the KAN paper, as dataset generators.

The KAN paper (Liu et al. 2024, arXiv 2404.19756, section 3.3, Table 2) fits
dimensionless versions of 27 equations from the AI Feynman database (Udrescu &
Tegmark 2020). Each entry here gives the paper's dimensionless formula as a formula
string (parsed safely by :mod:`trainkit.kan.formula`), its variables in input order
and a sampling range per variable. Data are generated from the entry's own SymPy
formula, so a typo cannot make the data and the formula disagree.

Where unsure:
  * The dimensionless forms follow Table 2 of the paper as well as I could reconstruct
    it; each was re-derived from the original equation (kept in ``original``) by
    dividing by a reference quantity, so the physics is right even where the paper's
    choice of reference differs.
  * The paper's table does not list sampling ranges. Ranges here are chosen to stay
    clear of singularities (denominators, ``sqrt`` of negatives, ``asin`` outside
    [-1, 1]) while covering the interesting part of each function: angles span
    ``[0, 2 pi]``, ratios of positive quantities (masses, indices, lengths) are
    positive, free signed quantities span ``[-1, 1]``. pykan's ``feynman.py`` lists
    the dimensional forms and has known wrong entries; nothing is copied from it.
  * I.9.18: the paper's variable ``e`` is called ``g`` here (``e`` is Euler's number
    in formulas).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from trainkit.common.errors import UserError

TWO_PI = 2 * math.pi


@dataclass(frozen=True)
class FeynmanEquation:
    """One equation.

    Attributes:
        name: AI-Feynman id, e.g. ``"I.6.2"``.
        formula: dimensionless formula string (the target of symbolic regression).
        variables: input names in column order.
        ranges: ``(low, high)`` uniform sampling range per variable.
        original: the dimensional equation, for reference.
    """

    name: str
    formula: str
    variables: tuple[str, ...]
    ranges: tuple[tuple[float, float], ...]
    original: str

    @property
    def n_var(self) -> int:
        return len(self.variables)

    def expr(self):
        """The SymPy expression of :attr:`formula`."""
        from trainkit.kan.formula import parse_formula

        return parse_formula(self.formula, self.variables)[0]

    def function(self):
        """Torch callable ``f(x: [N, n_var]) -> [N, 1]`` built from :meth:`expr`."""
        from trainkit.kan.formula import to_callable

        return to_callable(self.expr(), list(self.variables))


def _eq(name, formula, variables, ranges, original) -> FeynmanEquation:
    variables = tuple(variables.split())
    assert len(variables) == len(ranges), name
    return FeynmanEquation(
        name, formula, variables, tuple(tuple(map(float, r)) for r in ranges), original
    )


_P = (-1, 1)  # a free signed quantity
_ANGLE = (0, TWO_PI)

EQUATIONS: dict[str, FeynmanEquation] = {
    e.name: e
    for e in [
        _eq(
            "I.6.2",
            "exp(-theta**2/(2*sigma**2))/sqrt(2*pi*sigma**2)",
            "theta sigma",
            [_P, (0.5, 2)],
            "exp(-theta**2/(2*sigma**2))/sqrt(2*pi*sigma**2)",
        ),
        _eq(
            "I.6.2b",
            "exp(-(theta - theta1)**2/(2*sigma**2))/sqrt(2*pi*sigma**2)",
            "theta theta1 sigma",
            [_P, _P, (0.5, 2)],
            "exp(-(theta - theta1)**2/(2*sigma**2))/sqrt(2*pi*sigma**2)",
        ),
        _eq(
            "I.9.18",
            "a/((b - 1)**2 + (c - d)**2 + (g - f)**2)",
            "a b c d g f",
            [_P, (-1, 0), _P, _P, _P, _P],
            "G*m1*m2/((x2 - x1)**2 + (y2 - y1)**2 + (z2 - z1)**2)",
        ),
        _eq("I.12.11", "1 + a*sin(theta)", "a theta", [_P, _ANGLE], "q*(Ef + B*v*sin(theta))"),
        _eq("I.13.12", "a*(1/b - 1)", "a b", [_P, (0.5, 2)], "G*m1*m2*(1/r2 - 1/r1)"),
        _eq(
            "I.15.3x",
            "(1 - a)/sqrt(1 - b**2)",
            "a b",
            [_P, (-0.9, 0.9)],
            "(x - u*t)/sqrt(1 - u**2/c**2)",
        ),
        _eq(
            "I.16.6",
            "(a + b)/(1 + a*b)",
            "a b",
            [(-0.9, 0.9), (-0.9, 0.9)],
            "(u + v)/(1 + u*v/c**2)",
        ),
        _eq("I.18.4", "(1 + a*b)/(1 + a)", "a b", [(0.5, 2), _P], "(m1*r1 + m2*r2)/(m1 + m2)"),
        _eq(
            "I.26.2", "asin(n*sin(theta2))", "n theta2", [(0, 0.99), _ANGLE], "asin(n*sin(theta2))"
        ),
        _eq("I.27.6", "1/(1 + a*b)", "a b", [(0.5, 2), (0.5, 2)], "1/(1/d1 + n/d2)"),
        _eq(
            "I.29.16",
            "sqrt(1 + a**2 - 2*a*cos(theta1 - theta2))",
            "a theta1 theta2",
            [(-0.9, 0.9), _ANGLE, _ANGLE],
            "sqrt(x1**2 + x2**2 - 2*x1*x2*cos(theta1 - theta2))",
        ),
        _eq(
            "I.30.3",
            "sin(n*theta/2)**2/sin(theta/2)**2",
            "n theta",
            [(0, 4), (0.4 * math.pi, 1.6 * math.pi)],
            "I0*sin(n*theta/2)**2/sin(theta/2)**2",
        ),
        _eq("I.30.5", "asin(a/n)", "a n", [_P, (1.1, 2)], "asin(lam/(n*d))"),
        _eq(
            "I.37.4",
            "1 + a + 2*sqrt(a)*cos(delta)",
            "a delta",
            [(0.1, 1), _ANGLE],
            "I1 + I2 + 2*sqrt(I1*I2)*cos(delta)",
        ),
        _eq("I.40.1", "n0*exp(-a)", "n0 a", [(0, 1), (0, 2)], "n0*exp(-m*g*x/(kb*T))"),
        _eq("I.44.4", "n*log(a)", "n a", [(0, 1), (0.5, 2)], "n*kb*T*log(V2/V1)"),
        _eq(
            "I.50.26",
            "cos(a) + alpha*cos(a)**2",
            "a alpha",
            [_ANGLE, (0, 1)],
            "x1*(cos(omega*t) + alpha*cos(omega*t)**2)",
        ),
        _eq("II.2.42", "(a - 1)*b", "a b", [_P, _P], "kappa*(T2 - T1)*A/d"),
        _eq(
            "II.6.15a",
            "c*sqrt(a**2 + b**2)/(4*pi)",
            "a b c",
            [_P, _P, _P],
            "3/(4*pi*epsilon)*pd*z/r**5*sqrt(x**2 + y**2)",
        ),
        _eq(
            "II.11.7",
            "n0*(1 + a*cos(theta))",
            "n0 a theta",
            [(0, 1), _P, _ANGLE],
            "n0*(1 + pd*Ef*cos(theta)/(kb*T))",
        ),
        _eq(
            "II.11.27",
            "n*alpha/(1 - n*alpha/3)",
            "n alpha",
            [(0, 1), (0, 2)],
            "n*alpha/(1 - n*alpha/3)*epsilon*Ef",
        ),
        _eq(
            "II.35.18",
            "n0/(exp(a) + exp(-a))",
            "n0 a",
            [(0, 1), _P],
            "n0/(exp(mu*B/(kb*T)) + exp(-mu*B/(kb*T)))",
        ),
        _eq(
            "II.36.38",
            "a + alpha*b",
            "a alpha b",
            [_P, _P, _P],
            "mu*B/(kb*T) + mu*alpha*M/(epsilon*c**2*kb*T)",
        ),
        _eq("II.38.3", "a/b", "a b", [_P, (0.5, 2)], "Y*A*x/d"),
        _eq(
            "III.9.52",
            "a*sin((b - c)/2)**2/((b - c)/2)**2",
            "a b c",
            [(0, 1), _ANGLE, _ANGLE],
            "pd*Ef*t/hbar*sin((omega - omega0)*t/2)**2/((omega - omega0)*t/2)**2",
        ),
        _eq(
            "III.10.19", "sqrt(1 + a**2 + b**2)", "a b", [_P, _P], "mu*sqrt(Bx**2 + By**2 + Bz**2)"
        ),
        _eq(
            "III.17.37",
            "beta*(1 + alpha*cos(theta))",
            "alpha beta theta",
            [_P, _P, _ANGLE],
            "beta*(1 + alpha*cos(theta))",
        ),
    ]
}
"""All equations, by AI-Feynman id, in the order of the paper's Table 2."""


def names() -> list[str]:
    """The equation ids, in table order."""
    return list(EQUATIONS)


def get(name: str) -> FeynmanEquation:
    """Look up an equation by id (``"I.6.2"``); one-line UserError if unknown."""
    if name not in EQUATIONS:
        raise UserError(
            f"unknown Feynman equation '{name}' (expected one of: {', '.join(EQUATIONS)})"
        )
    return EQUATIONS[name]


def _sample(eq: FeynmanEquation, n: int, gen: torch.Generator) -> torch.Tensor:
    lo = torch.tensor([r[0] for r in eq.ranges], dtype=torch.float64)
    hi = torch.tensor([r[1] for r in eq.ranges], dtype=torch.float64)
    return lo + (hi - lo) * torch.rand(n, eq.n_var, generator=gen, dtype=torch.float64)


def make_dataset(
    name: str,
    train_num: int = 1000,
    test_num: int = 1000,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
):
    """Sample an equation's inputs uniformly in its ranges and evaluate its formula.

    Values are computed in float64 from the SymPy formula, then cast to ``dtype``.
    Points where the formula is not finite (measure zero, e.g. ``b == c`` in III.9.52)
    are redrawn.

    Args:
        name: equation id, e.g. ``"I.6.2"``.
        train_num, test_num: number of points in each split.
        seed: seed of the ``torch.Generator`` (train drawn first, then test).
        dtype: dtype of the returned tensors.

    Returns:
        ``(train_x [train_num, n_var], train_y [train_num, 1], test_x, test_y)``.
    """
    eq = get(name)
    if train_num < 0 or test_num < 0:
        raise UserError(f"train_num and test_num must be >= 0, got {train_num}, {test_num}")
    f = eq.function()
    gen = torch.Generator().manual_seed(int(seed))
    out = []
    for n in (train_num, test_num):
        x = _sample(eq, n, gen)
        y = f(x)
        for _ in range(10):
            bad = ~torch.isfinite(y[:, 0])
            if not bad.any():
                break
            x[bad] = _sample(eq, int(bad.sum()), gen)
            y[bad] = f(x[bad])
        else:  # pragma: no cover - would mean a wrong range
            raise RuntimeError(f"{name}: formula is not finite on its sampling ranges")
        out += [x.to(dtype), y.to(dtype)]
    return tuple(out)


def make_dataset_dict(
    name: str,
    train_num: int = 1000,
    test_num: int = 1000,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
) -> dict:
    """:func:`make_dataset` in the dict format of :meth:`trainkit.kan.KAN.fit`
    (``train_input``, ``train_label``, ``test_input``, ``test_label``)."""
    keys = ("train_input", "train_label", "test_input", "test_label")
    return dict(zip(keys, make_dataset(name, train_num, test_num, seed, dtype)))
