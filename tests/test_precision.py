"""An unset ``--trainer.precision`` is the faster candidate for this model on this device,
timed once (with a fake clock here: no assertion depends on real time) and cached."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from test_cli import TINY

from contrastive import precision
from contrastive.cli import main
from contrastive.methods import SimCLR
from contrastive.precision import BF16, FLOAT32, cache_file, candidates, choose_precision


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("WORLD_SIZE", raising=False)


@pytest.fixture
def bf16_cpu(monkeypatch):
    monkeypatch.setattr(precision, "cpu_bf16", lambda *cpuinfo: True)


def fake_clock(costs: dict[str, float], order=(FLOAT32, BF16)):
    """A clock under which each timed step of ``order[i]`` (the candidates in the order they
    alternate) takes ``costs[order[i]]`` seconds."""
    now, calls = [0.0], [0]

    def timer() -> float:
        call = calls[0]
        calls[0] += 1
        if call % 2 == 1:  # the end of a step: its cost has passed
            now[0] += costs[order[(call // 2) % len(order)]]
        return now[0]

    return timer


def no_clock() -> float:
    raise AssertionError("measured again: the cache was not used")


def _model(**kwargs) -> SimCLR:
    return SimCLR(backbone_kwargs={"width": 4}, projector_hidden_dim=16, **kwargs)


CPU = torch.device("cpu")
CPU_BF16 = precision.cpu_bf16  # as imported, before conftest's CPU without bf16


@pytest.mark.parametrize(
    "flags, expected",
    [("fpu sse avx512_bf16 avx2", True), ("fpu amx_bf16", True), ("fpu avx2 avx512f", False)],
)
def test_bf16_instructions_are_read_from_cpuinfo(flags, expected, tmp_path):
    (tmp_path / "cpuinfo").write_text(f"processor : 0\nflags\t\t: {flags}\n")
    assert CPU_BF16(str(tmp_path / "cpuinfo")) is expected
    assert CPU_BF16(str(tmp_path / "missing")) is False


def test_the_candidates_are_float32_and_native_bf16(monkeypatch):
    assert candidates(CPU) == [FLOAT32]  # conftest: a CPU without bf16
    monkeypatch.setattr(precision, "cpu_bf16", lambda *cpuinfo: True)
    assert candidates(CPU) == [FLOAT32, BF16]
    for supported, expected in ((True, [FLOAT32, BF16]), (False, [FLOAT32])):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, s=supported, **k: s)
        assert candidates(torch.device("cuda")) == expected
    assert candidates(torch.device("mps")) == [FLOAT32]


@pytest.mark.parametrize(
    "accelerator, cuda, expected",
    [
        ("auto", True, "cuda"),
        ("gpu", True, "cuda"),
        (None, True, "cuda"),
        ("cpu", True, "cpu"),
        ("auto", False, "cpu"),
    ],  # fmt: skip
)
def test_the_device_measured_is_the_runs(accelerator, cuda, expected, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    assert precision.device_for(accelerator).type == expected


@pytest.mark.parametrize("costs, expected", [((3.0, 1.0), BF16), ((1.0, 3.0), FLOAT32)])
def test_the_faster_candidate_wins_and_is_cached(costs, expected, bf16_cpu):
    timer = fake_clock(dict(zip((FLOAT32, BF16), costs, strict=True)))
    choice = choose_precision(_model(), CPU, 16, 8, timer=timer)
    assert choice.precision == expected and choice.source == "measured"
    assert choice.seconds == {FLOAT32: costs[0], BF16: costs[1]}
    again = choose_precision(_model(), CPU, 16, 8, timer=no_clock)
    assert (again.precision, again.seconds, again.source) == (expected, choice.seconds, "cached")
    cached = json.loads(cache_file().read_text())
    assert [entry["precision"] for entry in cached.values()] == [expected]


def test_another_model_or_size_is_measured_again(bf16_cpu):
    choose_precision(_model(), CPU, 16, 8, timer=fake_clock({FLOAT32: 1.0, BF16: 2.0}))
    wider = SimCLR(backbone_kwargs={"width": 8}, projector_hidden_dim=16)
    assert choose_precision(wider, CPU, 16, 8, fake_clock({FLOAT32: 2.0, BF16: 1.0})).source == (
        "measured"
    )
    assert choose_precision(_model(), CPU, 24, 8, fake_clock({FLOAT32: 2.0, BF16: 1.0})).source == (
        "measured"
    )
    assert len(json.loads(cache_file().read_text())) == 3
    # Weights do not change the speed: the same architecture from a checkpoint is the same entry.
    torch.save(_model().backbone.state_dict(), "w.pt")
    loaded = SimCLR(backbone_kwargs={"width": 4, "checkpoint": "w.pt"}, projector_hidden_dim=16)
    assert choose_precision(loaded, CPU, 16, 8, no_clock).source == "cached"


def test_an_unreadable_cache_is_measured_again_and_rewritten(bf16_cpu):
    cache_file().parent.mkdir(parents=True)
    cache_file().write_text("{not json")
    choice = choose_precision(_model(), CPU, 16, 8, fake_clock({FLOAT32: 2.0, BF16: 1.0}))
    assert choice.source == "measured" and len(json.loads(cache_file().read_text())) == 1


def test_one_candidate_is_not_timed():
    choice = choose_precision(_model(), CPU, 16, 8, timer=no_clock)  # conftest: no bf16
    assert (choice.precision, choice.seconds, choice.source) == (FLOAT32, {}, "the only candidate")


def test_processes_started_together_do_not_time(bf16_cpu, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")  # each would time on its own and might disagree
    choice = choose_precision(_model(), CPU, 16, 8, timer=no_clock)
    assert (choice.precision, choice.source) == (FLOAT32, "not measured")
    assert not cache_file().exists()


def test_measuring_leaves_the_model_and_the_random_stream_as_they_were(bf16_cpu):
    model = _model(channels_last=True)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    choose_precision(model, CPU, 16, 8, timer=fake_clock({FLOAT32: 2.0, BF16: 1.0}))
    assert torch.equal(torch.get_rng_state(), rng)
    for key, value in model.state_dict().items():  # BatchNorm's running statistics included
        assert torch.equal(value, state[key]), key
    assert all(p.grad is None for p in model.parameters())


def test_timing_alternates_the_candidates_within_a_budget():
    ran: list[str] = []
    steps = {name: (lambda n=name: ran.append(n)) for name in ("a", "b")}
    best = precision.time_steps(
        steps, lambda: None, fake_clock({"a": 0.4, "b": 0.1}, order=("a", "b")), budget_s=1.0
    )
    assert best == pytest.approx({"a": 0.4, "b": 0.1})
    # One untimed round, then rounds of both until the timed ones took the budget (1.0 s):
    # two rounds take 1.0 s, so a third does not start.
    assert ran == ["a", "b"] * 3


def _saved_precision() -> str:
    run = next(Path("runs").glob("*/version_*"))
    return yaml.safe_load((run / "config.yaml").read_text())["trainer"]["precision"]


def test_the_cli_takes_the_measured_precision_and_says_why(bf16_cpu, monkeypatch, capsys):
    monkeypatch.setattr(precision, "measure", lambda *a, **k: {FLOAT32: 0.2, BF16: 0.1})
    main(["fit", "--model=SimCLR", *TINY, "--trainer.max_steps=1"])
    assert _saved_precision() == BF16
    err = capsys.readouterr().err
    assert "precision: bf16-mixed (measured on cpu: " in err
    assert "32-true 200.0 ms, bf16-mixed 100.0 ms per step)" in err


def test_an_explicit_precision_is_never_measured_or_replaced(bf16_cpu, monkeypatch, capsys):
    def refuse(*args, **kwargs):
        raise AssertionError("measured although the precision was given")

    monkeypatch.setattr(precision, "measure", refuse)
    main(["fit", "--model=SimCLR", *TINY, "--trainer.max_steps=1", "--trainer.precision=32-true"])
    assert _saved_precision() == FLOAT32
    assert "precision:" not in capsys.readouterr().err
