"""The trainkit command line: help at every level, config errors are one line + exit 2."""

import subprocess
import sys
from dataclasses import dataclass, field

import pytest

import trainkit
from trainkit import cli
from trainkit.commands import Command


@dataclass
class _Sec:
    n: int = 1
    name: str = "a"


@dataclass
class EchoConfig:
    sec: _Sec = field(default_factory=_Sec)
    output_dir: str = "out"


def echo_run(cfg, args):
    print(f"n={cfg.sec.n} name={cfg.sec.name} out={cfg.output_dir}")
    return 0


ECHO = Command(
    help="echo a config",
    run=f"{__name__}:echo_run",
    config=f"{__name__}:EchoConfig",
    flags={"--n": "sec.n"},
)


@pytest.fixture
def with_echo(monkeypatch):
    real = cli.part_commands

    def fake(part):
        cmds = dict(real(part))
        if part == "kan":
            cmds["echo"] = ECHO
        return cmds

    monkeypatch.setattr(cli, "part_commands", fake)


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "trainkit", *args], capture_output=True, text=True, timeout=120
    )


def test_version_and_help_at_every_level():
    r = run_cli("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"trainkit {trainkit.__version__}"
    r = run_cli("--help")
    assert r.returncode == 0
    for part in ("demo", "kan", "llm", "rlhf", "longctx"):
        assert part in r.stdout
    for part in ("kan", "llm", "rlhf", "longctx"):
        r = run_cli(part, "--help")
        assert r.returncode == 0, r.stderr
        assert f"usage: trainkit {part}" in r.stdout
    r = run_cli("demo", "--help")
    assert "--quick" in r.stdout and "--parts" in r.stdout


def test_config_command_overrides_flags_and_print_config(with_echo, capsys):
    assert cli.main(["kan", "echo", "sec.name=b", "--n", "5"]) == 0
    assert capsys.readouterr().out.strip() == "n=5 name=b out=out"
    # explicit overrides come after flags and win
    assert cli.main(["kan", "echo", "--n", "5", "sec.n=6"]) == 0
    assert capsys.readouterr().out.strip() == "n=6 name=a out=out"
    # overrides may sit between flags
    assert cli.main(["kan", "echo", "sec.name=c", "--n", "7", "output_dir=o2"]) == 0
    assert capsys.readouterr().out.strip() == "n=7 name=c out=o2"
    assert cli.main(["kan", "echo", "--print-config", "sec.n=3"]) == 0
    assert capsys.readouterr().out == "sec:\n  n: 3\n  name: a\noutput_dir: out\n"


def test_config_typo_is_one_line_and_exit_2(with_echo, capsys, tmp_path):
    cfgfile = tmp_path / "c.yaml"
    cfgfile.write_text("sec:\n  nn: 2\n")
    assert cli.main(["kan", "echo", "--config", str(cfgfile)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("trainkit: error: ") and "unknown key 'sec.nn'" in err
    assert "valid keys here: n, name" in err
    assert cli.main(["kan", "echo", "sec.n=x"]) == 2
    assert "'sec.n' expects an integer, got 'x'" in capsys.readouterr().err


def test_unknown_demo_part_exit_2(tmp_path):
    r = run_cli("demo", "--parts", "kan,nope", "--out", str(tmp_path / "d"))
    assert r.returncode == 2
    assert (
        r.stderr.strip()
        == "trainkit: error: unknown demo part 'nope'; choose from kan, rlhf, longctx"
    )
    assert not (tmp_path / "d" / "report.md").exists()


def test_import_trainkit_is_light():
    code = (
        "import sys, trainkit, trainkit.cli, trainkit.config; "
        "print(sorted(m for m in ('torch','transformers','ray','sympy','matplotlib') if m in sys.modules))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "[]"
