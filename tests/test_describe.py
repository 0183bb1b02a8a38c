"""The describer of ``contrastive data triplets`` (contrastive/tools/describe.py) against a
loopback stub of an OpenAI-compatible server: requests, retries, the answer cache, the bounded
pool and its progress bar, and runs stopped by SIGKILL or Ctrl-C that lose no paid answer."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from chat_server import GOOD, ChatServer, pair_of
from PIL import Image
from test_triplets_tool import _picture, _run

from contrastive.datamodules.triplets import read_triplet_manifest
from contrastive.tools.describe import (
    AnswerCache,
    CacheError,
    ChatDescriber,
    Description,
    parse_phrases,
)


@pytest.fixture
def chat(monkeypatch):
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")  # never send loopback to a proxy
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    server = ChatServer()
    yield server
    server.close()


@pytest.fixture
def two_images(tmp_path) -> tuple[Path, Path]:
    a, b = tmp_path / "a.png", tmp_path / "b.jpg"
    _picture(a, (200, 40, 40), 0)
    _picture(b, (40, 40, 200), 1)
    return a, b


def _describer(chat: ChatServer, **kwargs) -> ChatDescriber:
    settings = {"api_key": "sk-test", "timeout": 5.0, "retries": 2, "backoff": 0.01} | kwargs
    return ChatDescriber(chat.url, "vision-model", **settings)


def test_the_request_names_the_model_and_carries_both_images(chat, two_images):
    describer = _describer(chat, max_tokens=64)
    assert describer.describe(*two_images) == Description(tuple(GOOD), None, answered=True)
    (headers, body), *_ = chat.requests
    assert headers["Authorization"] == "Bearer sk-test"
    assert headers["Content-Type"] == "application/json"
    assert body["model"] == "vision-model" and body["max_tokens"] == 64
    (message,) = body["messages"]
    assert message["role"] == "user"
    text, *images = message["content"]
    assert text["type"] == "text" and "JSON list" in text["text"]
    assert [part["type"] for part in images] == ["image_url", "image_url"]
    for part, path in zip(images, two_images, strict=True):
        url = part["image_url"]["url"]
        assert url.startswith("data:image/jpeg;base64,")
        data = base64.b64decode(url.split(",", 1)[1])
        assert data[:3] == b"\xff\xd8\xff"  # a JPEG, also for the PNG
        with Image.open(io.BytesIO(data)) as decoded, Image.open(path) as original:
            assert decoded.size == original.size
    assert "Authorization" not in _sent_headers(chat, two_images, api_key=None)


def _sent_headers(chat: ChatServer, images, **kwargs) -> dict:
    _describer(chat, **kwargs).describe(*images)
    return chat.requests[-1][0]


@pytest.mark.parametrize(
    ("content", "phrases", "reason"),
    [
        ('```json\n["same color", "both round"]\n```', ["same color", "both round"], None),
        ('["same color", " same color ", "", "both round"]', ["same color", "both round"], None),
        ("They are both red.", None, "malformed answer"),
        ('{"phrases": ["red"]}', None, "malformed answer"),
        ('["red", 3]', None, "malformed answer"),
        ("[]", None, "empty answer"),
    ],
)
def test_answers_are_parsed_or_skipped_with_a_reason(chat, two_images, content, phrases, reason):
    chat.plan = [("ok", content)]
    describer = _describer(chat)
    # Answered either way: the endpoint was paid for, so even an unusable answer is cached.
    assert describer.describe(*two_images) == Description(tuple(phrases or ()), reason, True)
    assert parse_phrases(content) == (phrases if reason != "empty answer" else [])
    assert describer.requests == 1


class _Waits(threading.Event):
    """A stop event that records the waits asked of it and returns at once (never set)."""

    def __init__(self) -> None:
        super().__init__()
        self.waits: list[float] = []

    def wait(self, timeout: float | None = None) -> bool:
        self.waits.append(timeout)
        return False


def test_retries_honour_retry_after_and_give_up_on_other_4xx(chat, two_images):
    stop = _Waits()  # the stub server never makes the client wait for real
    chat.plan, chat.retry_after = ["500", "429", ("ok", json.dumps(GOOD))], "3"
    describer = _describer(chat, backoff=0.01, stop=stop)
    assert describer.describe(*two_images).phrases == tuple(GOOD)
    assert describer.requests == 3 and stop.waits == [0.01, 3.0]  # backoff, then Retry-After
    chat.plan = ["500"]
    failed = Description(reason="http 500")  # not answered: asked again on the next run
    assert describer.describe(*two_images) == failed
    assert describer.requests == 3 + 3  # the first try and 2 retries
    chat.plan = ["400", ("ok", json.dumps(GOOD))]
    assert describer.describe(*two_images) == Description(reason="http 400")
    assert describer.requests == 7  # not retried
    gone = describer.describe(two_images[0], two_images[0].parent / "gone.png")
    assert gone == Description(reason="unreadable image") and describer.requests == 7  # none sent


def test_a_request_slower_than_the_timeout_is_retried(chat, two_images):
    chat.plan = ["delay", ("ok", json.dumps(["same size"]))]
    describer = _describer(chat, timeout=0.3)
    assert describer.describe(*two_images).phrases == ("same size",)
    assert describer.requests >= 2  # 2, or more if a loaded machine made the answer slow too
    chat.plan = ["delay"]
    slow = _describer(chat, timeout=0.3, retries=1)
    assert slow.describe(*two_images) == Description(reason="timeout")


def test_the_tool_describes_random_pairs_and_counts_what_failed(
    chat, tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("TEST_API_KEY", "sk-from-env")
    two = json.dumps(GOOD)
    chat.plan = [
        ("ok", two),
        ("ok", f"```json\n{two}\n```"),
        ("ok", "garbage"),
        "500",
        ("ok", two),
        "429",  # Retry-After: 0
        ("ok", two),
        "400",
        ("ok", two),
    ]
    out = tmp_path / "described.jsonl"
    images = _image_set(tmp_path / "set", 12)
    args = ["--images", images, "--pairs", "random", "--num_pairs", "8", "--out", out]
    chat_args = ["--describer", "chat", "--base_url", chat.url, "--model", "vision-model"]
    settings = ["--api_key_env", "TEST_API_KEY", "--timeout", "5", "--backoff", "0.01"]
    assert _run(*args, *chat_args, *settings) == 0
    summary = capsys.readouterr().out
    # Whichever pair meets which answer on the 4 workers: six are described (two phrases
    # each), one answer is garbage, one pair got a 400 (the 500 and 429 were retried).
    assert summary.strip() == (
        f"triplets: made 12 rows in {out} (random 12); skipped 2 (malformed answer: 1, http 400: 1)"
    )
    assert len(chat.requests) == 10  # 8 pairs, and one retry after the 500 and the 429
    assert {h["Authorization"] for h, _ in chat.requests} == {"Bearer sk-from-env"}
    rows, _ = read_triplet_manifest(out)
    assert {r.condition for r in rows} == {"described"}
    assert Counter(r.text for r in rows) == {"same color": 6, "both are squares": 6}
    pairs = [(r.image_a, r.image_b) for r in rows]
    assert pairs[0::2] == pairs[1::2]  # each pair gives one row per phrase

    # A rerun asks only for the pair that got the 400: the garbage answer was paid for, kept.
    chat.plan = [("ok", two)]
    assert _run(*args, *chat_args, *settings, "--overwrite") == 0
    assert len(chat.requests) == 11
    assert "made 14 rows" in capsys.readouterr().out


# ---- the cache, the pool and stopped runs --------------------------------------------------


def _image_set(root: Path, n: int = 6) -> Path:
    """``n`` small PNGs, each different, in two class folders."""
    for i in range(n):
        folder = root / ("odd" if i % 2 else "even")
        folder.mkdir(parents=True, exist_ok=True)
        _picture(folder / f"{i}.png", (30 * i % 256, 90, 200 - 15 * i % 200), i)
    return root


def _args(chat: ChatServer, images: Path, out: Path, *extra: str) -> list:
    """Ten random pairs of six images, described by ``chat``."""
    return [
        *("--images", images, "--pairs", "random", "--num_pairs", "10", "--out", out),
        *("--describer", "chat", "--base_url", chat.url, "--model", "vision-model"),
        *("--timeout", "30", "--backoff", "0.01", *extra),
    ]


def _wait_for(condition, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _answers(cache: Path) -> int:
    """The whole lines of a cache file after its header."""
    return max(0, cache.read_bytes().count(b"\n") - 1) if cache.is_file() else 0


def test_the_cache_keeps_answers_skips_a_cut_line_and_refuses_other_files(tmp_path):
    path = tmp_path / "answers.jsonl"
    cache = AnswerCache(path)
    kept = {
        "k1": Description(("même couleur",), None, True),
        "k2": Description((), "empty answer", True),
    }
    for key, description in kept.items():
        cache.add(key, description, Path("a.png"), Path(f"{key}.png"))
    cache.close()
    with open(path, "a") as f:
        f.write('{"key": "k3", "phrases": ["cut by a ki')  # a kill in the middle of a line
    again = AnswerCache(path)
    assert again.answers == kept and again.torn == 1
    again.add("k3", Description(("same size",), None, True), Path("a.png"), Path("c.png"))
    again.close()
    third = AnswerCache(path)  # the answer after the cut line is on a line of its own
    third.close()
    assert third.answers == {**kept, "k3": Description(("same size",), None, True)}
    assert path.read_bytes().isascii()  # a cut can never split a character
    other = tmp_path / "notes.jsonl"
    other.write_text('{"a user\'s": "file"}\n')
    with pytest.raises(CacheError, match="notes.jsonl is not an answer cache"):
        AnswerCache(other)
    assert other.read_text() == '{"a user\'s": "file"}\n'  # untouched


def test_requests_run_on_a_bounded_pool_with_a_progress_bar(chat, tmp_path, capsys):
    chat.plan, chat.hold_after = ["by-pair"], 0  # every request waits for release
    images, out = _image_set(tmp_path / "set"), tmp_path / "out.jsonl"
    code: list[int] = []
    run = threading.Thread(
        target=lambda: code.append(_run(*_args(chat, images, out, "--workers", "3")))
    )
    run.start()
    try:
        _wait_for(lambda: chat.held == 3, "three requests at once")
        time.sleep(0.3)  # an unbounded pool would send more meanwhile
        assert chat.held == 3 and len(chat.requests) == 3
    finally:
        chat.release.set()
        run.join(60)
    assert code == [0] and len(chat.requests) == 10
    err = capsys.readouterr().err
    assert "triplets: describing: 100%" in err and "10/10" in err
    assert "pair/s" in err or "s/pair" in err  # the rate, and so the ETA
    assert f"0 answers from {tmp_path / 'out.answers.jsonl'}, 10 pairs asked" in err


def _spawn(args: list) -> subprocess.Popen:
    """The tool in a child process, as a user runs it."""
    env = {**os.environ, "no_proxy": "127.0.0.1", "NO_PROXY": "127.0.0.1"}
    return subprocess.Popen(
        [sys.executable, "-m", "contrastive.tools.triplets", *map(str, args)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # A shell's background jobs start with SIGINT ignored: restore it, as a terminal has it.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def _rerun_asks_only_the_rest(chat, images, out, paid, capsys, tmp_path) -> None:
    """Rerun after a stopped run: no cached pair asked again, and the same manifest as a run
    that was never stopped."""
    cache = out.with_name(f"{out.stem}.answers.jsonl")
    chat.hold_after = None
    first = len(chat.requests)
    capsys.readouterr()
    assert _run(*_args(chat, images, out)) == 0
    asked = chat.asked()[first:]
    assert len(asked) == 10 - len(paid) and paid.isdisjoint(asked)
    assert (
        f"{len(paid)} answers from {cache}, {10 - len(paid)} pairs asked" in capsys.readouterr().err
    )
    reference = tmp_path / "reference.jsonl"
    assert _run(*_args(chat, images, reference)) == 0  # uninterrupted, its own cache
    assert out.read_text() == reference.read_text()
    first = len(chat.requests)
    assert _run(*_args(chat, images, out, "--overwrite")) == 0  # all cached now
    assert len(chat.requests) == first and out.read_text() == reference.read_text()


def test_a_killed_run_loses_no_answer_and_the_rerun_asks_only_the_rest(chat, tmp_path, capsys):
    chat.plan, chat.hold_after = ["by-pair"], 3
    images, out = _image_set(tmp_path / "set"), tmp_path / "run.jsonl"
    cache = tmp_path / "run.answers.jsonl"
    child = _spawn(_args(chat, images, out, "--workers", "2"))
    try:
        _wait_for(lambda: _answers(cache) == 3 and chat.held == 2, "3 answers, 2 in flight")
        child.kill()  # SIGKILL: no chance to clean up
        child.wait(30)
    finally:
        child.kill()
    paid = {pair_of(body) for body in chat.answered}
    assert len(paid) == 3 and not out.exists()
    with open(cache, "a") as f:
        f.write('{"key": "0f3a", "phrases": ["cut')  # as if killed in the middle of a line
    chat.release.set()  # the two requests in flight end; their client is gone
    _rerun_asks_only_the_rest(chat, images, out, paid, capsys, tmp_path)


def test_ctrl_c_keeps_the_answers_in_flight_and_exits_130(chat, tmp_path, capsys):
    chat.plan, chat.hold_after = ["by-pair"], 3
    images, out = _image_set(tmp_path / "set"), tmp_path / "run.jsonl"
    cache = tmp_path / "run.answers.jsonl"
    child = _spawn(_args(chat, images, out, "--workers", "2"))
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(child.stderr), daemon=True)
    reader.start()
    try:
        _wait_for(lambda: _answers(cache) == 3 and chat.held == 2, "3 answers, 2 in flight")
        child.send_signal(signal.SIGINT)
        _wait_for(lambda: any("waiting for the requests in flight" in s for s in lines), "it")
        chat.release.set()  # the two answers in flight arrive: paid for, so kept
        code = child.wait(30)
        reader.join(30)
    finally:
        child.kill()
    assert code == 130, "".join(lines)
    assert f"the answers had are kept in {cache}; run the same command again" in "".join(lines)
    assert _answers(cache) == 5 and not out.exists()
    paid = {pair_of(body) for body in chat.answered}
    assert len(paid) == 5
    _rerun_asks_only_the_rest(chat, images, out, paid, capsys, tmp_path)
