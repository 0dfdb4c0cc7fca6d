"""Safe loading: no unsafe deserialisation or code evaluation in the package source.

An AST scan of ``src/trainkit`` fails on: ``torch.load`` without ``weights_only=True``;
any use of ``pickle`` / ``cPickle`` / ``dill`` / ``cloudpickle`` / ``marshal`` loading;
``eval`` / ``exec`` / ``compile`` / ``__import__`` calls; ``yaml.load`` / ``yaml.unsafe_load``
(only ``safe_load`` is allowed); ``numpy.load(allow_pickle=True)``; ``shell=True``; and
``trust_remote_code=True``. The reward sandbox runs model-written code with ``exec`` in a
child process, but that code sits in a string literal (the child's script), so the scan
sees no call. A checkpoint file holding a malicious pickle is refused without running it.
"""

import ast
from pathlib import Path

import pytest
import torch

SRC = Path(__file__).resolve().parents[2] / "src" / "trainkit"
UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "marshal", "shelve"}
UNSAFE_BUILTINS = {"eval", "exec", "compile", "__import__"}


def _kw(call: ast.Call, name: str):
    for k in call.keywords:
        if k.arg == name:
            return k.value
    return None


def _is_true(node) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def _dotted(node) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return ""  # e.g. ``copy.deepcopy(m).eval()``: a method of a call's result
    parts.append(node.id)
    return ".".join(reversed(parts))


def scan(path: Path, root: Path = SRC.parent) -> list[str]:
    """Unsafe uses in one file, as ``file:line: what`` strings."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    rel = path.relative_to(root)
    found = []
    for node in ast.walk(tree):
        where = f"{rel}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
            for n in names:
                if n.split(".")[0] in UNSAFE_MODULES:
                    found.append(f"{where}: imports {n}")
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        if name in UNSAFE_BUILTINS:
            found.append(f"{where}: calls {name}()")
        if name == "torch.load" and not _is_true(_kw(node, "weights_only")):
            found.append(f"{where}: torch.load without weights_only=True")
        if name in ("yaml.load", "yaml.unsafe_load", "yaml.full_load"):
            found.append(f"{where}: {name} (use yaml.safe_load)")
        if name in ("np.load", "numpy.load") and _is_true(_kw(node, "allow_pickle")):
            found.append(f"{where}: {name}(allow_pickle=True)")
        if _is_true(_kw(node, "shell")):
            found.append(f"{where}: {name}(shell=True)")
        if _is_true(_kw(node, "trust_remote_code")):
            found.append(f"{where}: {name}(trust_remote_code=True)")
    return found


def test_scanner_flags_each_unsafe_pattern(tmp_path):
    code = (
        "import pickle\nimport torch, yaml, numpy as np, subprocess\n"
        "torch.load('x')\ntorch.load('x', weights_only=False)\ntorch.load('x', weights_only=True)\n"
        "eval('1')\nexec('x=1')\nyaml.load(s)\nyaml.safe_load(s)\nnp.load('a', allow_pickle=True)\n"
        "subprocess.run('ls', shell=True)\nf(trust_remote_code=True)\nmodel.eval()\n"
        "copy.deepcopy(m).eval()\n"
    )
    probe = tmp_path / "probe.py"
    probe.write_text(code)
    hits = scan(probe, tmp_path)
    assert [h.split(": ", 1)[1] for h in hits] == [
        "imports pickle",
        "torch.load without weights_only=True",
        "torch.load without weights_only=True",
        "calls eval()",
        "calls exec()",
        "yaml.load (use yaml.safe_load)",
        "np.load(allow_pickle=True)",
        "subprocess.run(shell=True)",
        "f(trust_remote_code=True)",
    ]


def test_package_source_has_no_unsafe_loading_or_eval():
    files = sorted(SRC.rglob("*.py"))
    assert len(files) > 50
    found = [hit for f in files for hit in scan(f)]
    assert found == [], "unsafe uses:\n" + "\n".join(found)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "pwned"))


@pytest.mark.parametrize("name", ["optimizer.pt", "scheduler.pt", "rng.pt"])
def test_checkpoint_refuses_a_malicious_pickle(tmp_path, name):
    from trainkit.common.errors import UserError
    from trainkit.llm.checkpoint import _load_pt

    marker = tmp_path / "marker"
    torch.save({"state": _Evil(str(marker))}, tmp_path / name)
    with pytest.raises(UserError, match="cannot be read safely"):
        _load_pt(tmp_path / name)
    assert not marker.exists()  # the payload never ran
