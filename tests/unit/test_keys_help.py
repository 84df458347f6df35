"""``python -m gateway keys --help`` explains the command and prints no key (issue 8.18)."""

from __future__ import annotations

import pytest

from gateway.cli import main


def test_keys_help_prints_usage_and_no_key(capsys):
    with pytest.raises(SystemExit) as done:
        main(["keys", "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m gateway keys")
    assert "signkey-" not in out and "evtkey-" not in out


def test_keys_refuses_arguments_it_does_not_take(capsys):
    with pytest.raises(SystemExit) as done:
        main(["keys", "frobnicate"])
    assert done.value.code == 2
    captured = capsys.readouterr()
    assert "frobnicate" in captured.err
    assert "signkey-" not in captured.out
