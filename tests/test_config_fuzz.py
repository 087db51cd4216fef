"""Issue #26: the config loader and `--set` under random input. Every document, override path and value, however
deep, long or aliased, ends within a second in a valid config or one `error:` message (exit 2, no traceback).
Bounded: a few dozen derandomized examples per test, a few seconds in all."""

from __future__ import annotations

import time

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sdakd.commands.runs
from sdakd.cli import main
from sdakd.commands.common import load_from_args
from sdakd.config.load import load_config

FUZZ = settings(max_examples=40, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])  # fmt: skip
WORDS = ["preset", "tiny", "method", "sdakd", "data", "scale", "gt_size", "stages", "s1", "iters", "run", "device",
         "methods", "loss", "perceptual", "weight", "seed", "teacher", "arch", "<<", "x"]  # fmt: skip
KEYS = st.sampled_from(WORDS) | st.text(st.characters(exclude_characters="="), max_size=8)  # "=" ends a --set path
LONG = st.integers(0, 300_000).map(lambda n: "m" * n)
SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20) | LONG | st.sampled_from(WORDS)
DIGITS = st.integers(1, 6000).map(lambda n: "9" * n)  # an integer past Python's 4300-digit conversion limit
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=4),
                      max_leaves=30)  # fmt: skip
YAML_CHARS = st.text(alphabet="[]{}:&*!|>-'\"#,.=<\n \t0123456789abcdefmnpstyl%@`?~", max_size=300)


@pytest.fixture
def loads_only(monkeypatch):
    """`sdakd train` that stops once its config is loaded: what is fuzzed is the way in, not training."""
    monkeypatch.setattr(sdakd.commands.runs, "cmd_train", lambda args: load_from_args(args) and None)
    load_config("tiny")  # imports done before the first timed case


def ends_well(capsys, *argv: str) -> None:
    started = time.perf_counter()
    code = main(["train", *argv])
    took = time.perf_counter() - started
    err = capsys.readouterr().err
    assert took < 1.0, (took, err[:300])
    if code != 0:
        assert code == 2 and err.startswith("error: ") and err.count("error: ") == 1, err[:2000]
        assert "Traceback" not in err and len(err) < 25 * 2100, err[:2000]


def aliased(levels: int, fanout: int, recursive: bool) -> str:
    """Anchors each naming `fanout` copies of the one before: fanout**levels values once expanded."""
    lines = ["preset: tiny", "a0: &a0 [x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * fanout)}]" for i in range(1, levels + 1)]
    tail = "data: &d {scale: *d}" if recursive else f"data: {{scale: *a{levels}}}"
    return "\n".join([*lines, tail]) + "\n"


@FUZZ
@given(document=VALUES, preset=st.booleans())
def test_random_documents(capsys, tmp_path, loads_only, document, preset):
    path = tmp_path / "fuzz.yaml"
    body = ({"preset": "tiny"} | document) if preset and isinstance(document, dict) else document
    path.write_text(yaml.safe_dump(body, width=10**9))
    ends_well(capsys, "--config", str(path))


@FUZZ
@given(text=YAML_CHARS)
def test_random_yaml_text(capsys, tmp_path, loads_only, text):
    path = tmp_path / "fuzz.yaml"
    path.write_text("preset: tiny\n" + text)
    ends_well(capsys, "--config", str(path))


@FUZZ
@given(levels=st.integers(1, 12), fanout=st.integers(1, 12), recursive=st.booleans(),
       nesting=st.integers(0, 3000))  # fmt: skip
def test_aliases_and_nesting(capsys, tmp_path, loads_only, levels, fanout, recursive, nesting):
    path = tmp_path / "fuzz.yaml"
    path.write_text(aliased(levels, fanout, recursive))
    ends_well(capsys, "--config", str(path))
    ends_well(capsys, "--preset", "tiny", "--set", "data.scale=" + "[" * nesting + "]" * nesting)


@FUZZ
@given(keys=st.integers(1, 600).flatmap(lambda n: st.lists(KEYS, min_size=n, max_size=n)),
       value=SCALARS | YAML_CHARS | DIGITS)  # fmt: skip
def test_random_overrides(capsys, loads_only, keys, value):
    ends_well(capsys, "--preset", "tiny", "--set", f"{'.'.join(keys)}={value}")
