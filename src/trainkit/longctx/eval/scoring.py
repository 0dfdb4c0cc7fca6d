"""Scoring of generated answers: normalisation, exact match, containment, ROUGE-L.

ROUGE-L (Lin 2004, "ROUGE: A Package for Automatic Evaluation of Summaries", sec. 3.1):
with ``LCS`` the longest common subsequence of the word sequences of prediction ``X``
(``m`` words) and reference ``Y`` (``n`` words),

    P = LCS / m,   R = LCS / n,   F = (1 + b^2) P R / (R + b^2 P)    (b = 1: 2PR / (P + R)).

Implemented here (no ``rouge-score`` dependency); words are the lower-cased alphanumeric
runs of the text.
"""

from __future__ import annotations

import re

_WORD = re.compile(r"[a-z0-9]+")
SCORERS = ("contains", "exact", "rouge")


def words(text: str) -> list[str]:
    """Lower-cased alphanumeric words: ``"The Key: 42!"`` -> ``["the", "key", "42"]``."""
    return _WORD.findall(text.lower())


def normalize(text: str) -> str:
    """Words joined by single spaces (case, punctuation and spacing ignored)."""
    return " ".join(words(text))


def exact_match(pred: str, answer: str) -> float:
    """1.0 when the normalised prediction equals the normalised answer, else 0.0."""
    return float(normalize(pred) == normalize(answer) and bool(normalize(answer)))


def contains_match(pred: str, answer: str) -> float:
    """1.0 when the answer's words occur as consecutive whole words of the prediction.

    ``contains_match("The pass key is 71432.", "71432") == 1.0`` but
    ``contains_match("714320", "71432") == 0.0``: the needle's fact must be reproduced
    exactly, while chat models may wrap it in a sentence.
    """
    a = normalize(answer)
    return float(bool(a) and f" {a} " in f" {normalize(pred)} ")


def lcs_length(x: list[str], y: list[str]) -> int:
    """Length of the longest common subsequence of two sequences (O(len(x) * len(y)) DP)."""
    if not x or not y:
        return 0
    prev = [0] * (len(y) + 1)
    for xi in x:
        cur = [0]
        for j, yj in enumerate(y):
            cur.append(prev[j] + 1 if xi == yj else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(pred: str, reference: str, beta: float = 1.0) -> dict[str, float]:
    """ROUGE-L precision, recall and F-measure of ``pred`` against ``reference``."""
    x, y = words(pred), words(reference)
    lcs = lcs_length(x, y)
    if lcs == 0:
        return {"precision": 0.0, "recall": 0.0, "f": 0.0}
    p, r = lcs / len(x), lcs / len(y)
    f = (1 + beta**2) * p * r / (r + beta**2 * p)
    return {"precision": p, "recall": r, "f": f}


def score(pred: str, answer: str, method: str = "contains") -> float:
    """A score in [0, 1] by ``method``: ``contains``, ``exact`` or ``rouge`` (ROUGE-L F)."""
    if method == "contains":
        return contains_match(pred, answer)
    if method == "exact":
        return exact_match(pred, answer)
    if method == "rouge":
        return rouge_l(pred, answer)["f"]
    raise ValueError(f"unknown scorer {method!r}; expected one of {SCORERS}")
