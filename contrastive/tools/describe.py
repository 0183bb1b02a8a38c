"""What two images share, in words: the text of ``contrastive data triplets``' random pairs.

:class:`Describer` is the plug-in interface; :class:`ChatDescriber` asks any OpenAI-compatible
``/chat/completions`` endpoint with both images inline. :func:`describe_pairs` runs a describer
over many pairs on a bounded thread pool with a progress bar, and keeps every answer in an
:class:`AnswerCache` as it arrives: a run stopped by Ctrl-C, a kill or a crash loses no answer
already paid for, and the next run asks only for the pairs still missing.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import sys
import threading
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import NamedTuple

from PIL import Image, ImageOps
from tqdm import tqdm

from contrastive.files import atomic_writer, json_rows
from contrastive.pixels import rgb_array
from contrastive.tools.fetch import Client, FetchError, Interrupted

PROMPT = (
    "Here are two images. In what respects are they alike? Answer with only a JSON list of "
    "up to 5 short phrases (2 to 6 words each), each naming one thing both images share, such "
    'as "same color", "both are portraits" or "similar brushwork".'
)
USER_AGENT = "contrastive-data-triplets/0.1 (Python urllib)"
_FENCE = re.compile(r"^```[a-zA-Z]*\s*(.*?)\s*```$", re.DOTALL)


class Description(NamedTuple):
    """A describer's answer for one pair.

    Attributes:
        phrases: What the two images share; empty when it could not say.
        reason: Why there are no phrases, in a few words (``"http 400"``, ``"empty answer"``);
            the tool counts skipped pairs by it.
        answered: Whether the describer gave an answer (one paid for, even if unusable): only
            answers are cached; a failed request is asked again on the next run.
    """

    phrases: tuple[str, ...] = ()
    reason: str | None = None
    answered: bool = False


class Describer(ABC):
    """Says in what respects two images are alike. :meth:`describe` is called from several
    threads at once, so it must keep no per-call state on the instance."""

    @abstractmethod
    def describe(self, image_a: Path, image_b: Path) -> Description:
        """The phrases naming what the two images share, or the reason there are none."""

    def cache_key(self) -> str | None:
        """Everything besides the two images that decides the answer (the model, the prompt):
        answers are cached under it and the images' contents. ``None``: never cached."""
        return None


def parse_phrases(content: str) -> list[str] | None:
    """A JSON list of strings from a model's answer (a ```json fence allowed), stripped and
    without repeats; ``None`` if the answer is not such a list."""
    text = content.strip()
    fenced = _FENCE.match(text)
    if fenced is not None:
        text = fenced.group(1)
    try:
        phrases = json.loads(text)
    except ValueError:
        return None
    if not isinstance(phrases, list) or not all(isinstance(p, str) for p in phrases):
        return None
    return list(dict.fromkeys(p.strip() for p in phrases if p.strip()))


def data_url(path: Path, size: int) -> str:
    """``path`` as a ``data:image/jpeg;base64,...`` URL, its longer side at most ``size``;
    converted as the training data is (:func:`~contrastive.pixels.rgb_array`: transparency on
    white)."""
    with Image.open(path) as image:
        image = Image.fromarray(rgb_array(ImageOps.exif_transpose(image)))
    image.thumbnail((size, size))
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=90)
    return "data:image/jpeg;base64," + base64.b64encode(out.getvalue()).decode("ascii")


class ChatDescriber(Describer):
    """Asks an OpenAI-compatible ``/chat/completions`` endpoint what two images share.

    Both images go inline (``image_url`` parts holding JPEG data URLs) with :data:`PROMPT`; the
    answer (``choices[0].message.content``) must be a JSON list of strings, optionally in a
    ```json fence. Requests go through :class:`~contrastive.tools.fetch.Client`: timeouts,
    network errors and HTTP 408/425/429/5xx are retried with exponential backoff
    (``Retry-After`` honoured, up to ``max_backoff``); other statuses fail the pair at once.

    Args:
        base_url: The API root, e.g. ``https://api.openai.com/v1`` or ``http://localhost:8000/v1``.
        model: The model name sent in the request.
        api_key: Sent as ``Authorization: Bearer KEY``; none when ``None`` (local servers).
        timeout: Seconds a connection or a read may block.
        retries: Further attempts after a retryable failure.
        max_tokens: Longest answer asked for.
        backoff: Seconds before the first retry, doubled for each next one.
        max_backoff: Longest wait between attempts.
        image_size: Images are scaled down to fit this square before sending.
        prompt: The question asked with the two images.
        stop: When set, retries and reads stop (:class:`~contrastive.tools.fetch.Interrupted`).
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        timeout: float = 60.0,
        retries: int = 3,
        max_tokens: int = 200,
        backoff: float = 1.0,
        max_backoff: float = 30.0,
        image_size: int = 512,
        prompt: str = PROMPT,
        stop: threading.Event | None = None,
    ) -> None:
        if max_tokens < 1 or image_size < 1:
            raise ValueError(
                f"expected max_tokens >= 1 and image_size >= 1, got {max_tokens}, {image_size}"
            )
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.api_key, self.max_tokens = model, api_key, max_tokens
        self.image_size, self.prompt = image_size, prompt
        self.client = Client(USER_AGENT, timeout, retries, backoff, max_backoff, stop=stop)

    @property
    def requests(self) -> int:
        """HTTP requests sent, retries included."""
        return self.client.requests

    def cache_key(self) -> str:
        settings = [self.model, self.prompt, self.image_size, self.max_tokens]
        return json.dumps(settings, ensure_ascii=False)

    def describe(self, image_a: Path, image_b: Path) -> Description:
        try:
            urls = [data_url(p, self.image_size) for p in (image_a, image_b)]
        except (OSError, ValueError, Image.DecompressionBombError):
            return Description(reason="unreadable image")
        content = [{"type": "text", "text": self.prompt}]
        content += [{"type": "image_url", "image_url": {"url": url}} for url in urls]
        request = {
            "model": self.model,
            "max_tokens": self.max_tokens,
            "messages": [{"role": "user", "content": content}],
        }
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        try:
            answer = self.client.post_json(self.url, request, headers)
            text = answer["choices"][0]["message"]["content"]
        except FetchError as err:
            return Description(reason=err.reason)
        except (KeyError, IndexError, TypeError):  # not the documented shape: no answer
            return Description(reason="malformed answer")
        phrases = parse_phrases(text) if isinstance(text, str) else None
        if not phrases:
            reason = "malformed answer" if phrases is None else "empty answer"
            return Description(reason=reason, answered=True)
        return Description(tuple(phrases), answered=True)


# ---- the cache and the pool ----------------------------------------------------------------

CACHE_HEADER = {"contrastive": "describer answers", "version": 1}


class CacheError(Exception):
    """A cache file that is not one (the user's other file): one line, nothing written."""


class AnswerCache:
    """Answers already had, by key: a JSON-lines file, one answer appended per line as it
    arrives, flushed to disk before the next.

    The first line is :data:`CACHE_HEADER`, so a file that is something else is refused rather
    than appended to. A line cut short by a kill is ignored on reading (and the next answer
    starts on a line of its own). Lines are ASCII (``ensure_ascii``), so a cut never splits a
    character.

    Args:
        path: The cache file; created if absent.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.answers: dict[str, Description] = {}
        self.torn = 0  # lines that were not whole answers
        if not path.is_file() or path.stat().st_size == 0:
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_writer(path) as f:
                f.write(json.dumps(CACHE_HEADER) + "\n")
        else:
            self._load()
        self._file = open(path, "a", encoding="ascii")  # noqa: SIM115 (closed by close())
        with open(path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":  # the torn line of a kill: end it
                self._file.write("\n")
                self._file.flush()

    def _load(self) -> None:
        rows = json_rows(self.path)
        first = next(rows, (0, None))[1]
        if first != CACHE_HEADER:
            raise CacheError(
                f"{self.path} is not an answer cache (its first line is not "
                f"{json.dumps(CACHE_HEADER)}); give another --cache or remove it"
            )
        for _, row in rows:
            phrases = row.get("phrases") if row is not None else None
            if not isinstance(phrases, list) or not isinstance(row.get("key"), str):
                self.torn += 1
                continue
            reason = row.get("reason")
            self.answers[row["key"]] = Description(tuple(map(str, phrases)), reason, True)

    def add(self, key: str, description: Description, image_a: Path, image_b: Path) -> None:
        """Append one answer and flush it to disk."""
        row = {"key": key, "image_a": str(image_a), "image_b": str(image_b)}
        row.update(phrases=list(description.phrases), reason=description.reason)
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        self.answers[key] = description

    def close(self) -> None:
        self._file.close()


def _digest(path: Path) -> str | None:
    """The SHA-256 of a file's bytes; ``None`` if it cannot be read."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return None
    return digest.hexdigest()


def describe_pairs(
    describer: Describer,
    pairs: Sequence[tuple[Path, Path]],
    workers: int = 4,
    cache: AnswerCache | None = None,
    stop: threading.Event | None = None,
) -> list[Description]:
    """Describe every pair, ``workers`` at a time, with a progress bar (rate and ETA) on stderr.

    A pair whose answer is in ``cache`` (same describer :meth:`~Describer.cache_key`, same
    image contents) is not asked again; each new answer is added to it as it arrives.

    Returns:
        The descriptions, in the order of ``pairs``.

    Raises:
        KeyboardInterrupt: On Ctrl-C, after setting ``stop``, cancelling the pairs not yet
            started and caching the answers of those in flight.
    """
    identity = describer.cache_key() if cache is not None else None

    def key_of(a: Path, b: Path) -> str | None:
        digests = [_digest(a), _digest(b)]
        if identity is None or None in digests:
            return None
        return hashlib.sha256(json.dumps([identity, *digests]).encode()).hexdigest()

    def task(a: Path, b: Path) -> tuple[str | None, Description, bool]:
        key = key_of(a, b)
        if key is not None and key in cache.answers:
            return key, cache.answers[key], True
        return key, describer.describe(a, b), False

    results: list[Description | None] = [None] * len(pairs)
    counts: Counter = Counter()
    bar = tqdm(total=len(pairs), desc="triplets: describing", unit="pair", file=sys.stderr)

    def record(future: Future, i: int) -> None:
        try:
            key, description, cached = future.result()
        except Interrupted:
            return
        results[i] = description
        counts["cached" if cached else "asked"] += 1
        if not description.phrases:
            counts["failed"] += 1
        if key is not None and not cached and description.answered:
            cache.add(key, description, *pairs[i])
        bar.update(1)
        bar.set_postfix(counts, refresh=False)

    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="describe")
    pending = {pool.submit(task, a, b): i for i, (a, b) in enumerate(pairs)}
    try:
        for future in as_completed(list(pending)):
            record(future, pending.pop(future))
    except KeyboardInterrupt:
        if stop is not None:
            stop.set()
        print("\ntriplets: interrupted; waiting for the requests in flight", file=sys.stderr)
        pool.shutdown(wait=True, cancel_futures=True)
        for future, i in pending.items():  # answers that arrived after all are kept
            if not future.cancelled():
                record(future, i)
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
    if cache is not None:
        print(
            f"triplets: {counts['cached']} answers from {cache.path}, {counts['asked']} pairs "
            "asked",
            file=sys.stderr,
        )
    return results
