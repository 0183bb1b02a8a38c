"""webdataset shards (contrastive/datamodules/shards.py): streaming and splitting, bad samples,
http shards retried and resumed, pipe: commands' exit status, image-only shards."""

from __future__ import annotations

import functools
import io
import tarfile

import pytest
from loopback import Loopback
from PIL import Image
from torch.utils.data import DataLoader

from contrastive import distributed
from contrastive.datamodules import shards
from contrastive.datamodules.common import Collate, Skipped
from contrastive.datamodules.shards import (
    TarShards,
    expand_shards,
    iterate_tar,
    split_plan,
    write_shard,
)


def jpeg(value: int, size: int = 20) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size + 4), (value, 255 - value, 0)).save(buffer, "JPEG")
    return buffer.getvalue()


def write_shards(root, count: int, per_shard: int = 5, captions: bool = True) -> list[str]:
    """``count`` shards of ``per_shard`` samples ``s{S}/{I}`` captioned ``pair S-I``."""
    paths = []
    for s in range(count):
        samples = [
            (f"s{s}/{i:03d}", jpeg(i * 10 + s), f"pair {s}-{i}" if captions else None)
            for i in range(per_shard)
        ]
        path = root / f"shard-{s:03d}.tar"
        write_shard(str(path), samples)
        paths.append(str(path))
    return paths


def test_shards_stream_their_samples_and_skip_bad_ones(tmp_path):
    (path,) = write_shards(tmp_path, 1, per_shard=3)
    with tarfile.open(path, "a") as tar:  # a sample without caption, one without image
        for name, data in (("bad/nocap.jpg", jpeg(1)), ("bad/noimg.txt", b"only words")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    truncated = tmp_path / "truncated.tar"
    truncated.write_bytes(open(path, "rb").read()[:1500])
    items = list(TarShards([path, str(truncated)], image_size=8))
    good = [i["caption"] for i in items if not isinstance(i, Skipped)]
    assert good[:3] == ["pair 0-0", "pair 0-1", "pair 0-2"]
    reasons = [i.reason for i in items if isinstance(i, Skipped)]
    assert reasons[:2] == ["empty caption", "missing image"]
    assert any(r.startswith("broken shard") for r in reasons)  # and the stream went on


def test_brace_ranges_and_globs_expand(tmp_path):
    assert expand_shards("s/{008..011}.tar") == [f"s/{i:03d}.tar" for i in range(8, 12)]
    assert expand_shards(["a.tar", "pipe:cat b.tar"]) == ["a.tar", "pipe:cat b.tar"]
    paths = write_shards(tmp_path, 3, per_shard=1)
    assert expand_shards(str(tmp_path / "shard-*.tar")) == paths


def test_split_plan_deals_shards_then_samples():
    assert split_plan(8, 1, 2, 0, 2) == ([1, 5], [])  # shards by rank, then by worker
    assert split_plan(3, 1, 2, 1, 2) == ([1], [(1, 2)])  # rank 1 has one shard: samples split
    assert split_plan(1, 0, 2, 1, 2) == ([0], [(0, 2), (1, 2)])


@pytest.mark.parametrize("num_shards", [8, 3, 1])
def test_two_ranks_of_two_workers_read_every_sample_exactly_once(tmp_path, monkeypatch, num_shards):
    urls = write_shards(tmp_path, num_shards, per_shard=6)
    expected = sorted(f"s{s}/{i:03d}" for s in range(num_shards) for i in range(6))
    seen = []
    for rank in range(2):
        monkeypatch.setattr(distributed, "rank", lambda r=rank: r)
        monkeypatch.setattr(distributed, "world_size", lambda: 2)
        dataset = TarShards(urls, image_size=8, shuffle=True, shuffle_buffer=4)
        loader = DataLoader(dataset, batch_size=4, num_workers=2, collate_fn=Collate())
        seen += [key for batch in loader for key in batch["key"]]
    assert sorted(seen) == expected  # no duplicate, nothing missing


def test_samples_per_epoch_gives_every_rank_the_same_number_of_samples(tmp_path, monkeypatch):
    urls = write_shards(tmp_path, 3, per_shard=5)  # 15 samples: 10 for rank 0, 5 for rank 1
    for rank in range(2):
        monkeypatch.setattr(distributed, "rank", lambda r=rank: r)
        monkeypatch.setattr(distributed, "world_size", lambda: 2)
        dataset = TarShards(urls, image_size=8, samples_per_epoch=7)
        keys = [item["key"] for item in dataset]
        assert len(keys) == 7 == len(dataset)  # rank 1 cycles through its 5 again


@pytest.fixture
def loopback(monkeypatch):
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    server = Loopback()
    yield server
    server.close()


def test_http_shards_are_retried_and_resumed_and_keep_one_connection(
    loopback, tmp_path, monkeypatch
):
    """Three shards over http: the first answers 503 once, the second drops its connection
    twice mid-stream. Every sample arrives once, in order, over kept connections."""
    fast = functools.partial(shards.Client, backoff=0.01)  # the waits, not the retries
    monkeypatch.setattr(shards, "Client", fast)
    paths = write_shards(tmp_path, 3, per_shard=6)
    urls = []
    for path in paths:
        name = "/" + path.rsplit("/", 1)[1]
        loopback.files[name] = open(path, "rb").read()
        urls.append(loopback.url + name)
    loopback.fail["/shard-000.tar"] = [503]
    loopback.drop["/shard-001.tar"] = [3000, 2500]
    items = list(TarShards(urls, image_size=8))
    assert [i["key"] for i in items] == [f"s{s}/{i:03d}" for s in range(3) for i in range(6)]
    assert len(loopback.requests) == 6  # 1 + 1 retry, 1 + 2 resumed, 1
    assert loopback.connections <= 4  # a new one after each drop, else the kept one


def test_an_http_shard_that_stays_down_is_one_skipped_entry(loopback):
    items = list(iterate_tar(f"{loopback.url}/gone.tar"))
    assert items == [Skipped(f"{loopback.url}/gone.tar", "broken shard (http 404)")]


def test_a_pipe_command_is_read_and_its_exit_status_checked(tmp_path):
    (path,) = write_shards(tmp_path, 1, per_shard=3)
    good = list(TarShards([f"pipe:cat {path}"], image_size=8))
    assert [i["caption"] for i in good] == ["pair 0-0", "pair 0-1", "pair 0-2"]
    # The archive arrives whole, then the command fails: the samples stand, the failure is told.
    failing = f"pipe:cat {path}; exit 3"
    items = list(TarShards([failing], image_size=8))
    assert [i["key"] for i in items if not isinstance(i, Skipped)] == ["s0/000", "s0/001", "s0/002"]
    assert [i for i in items if isinstance(i, Skipped)] == [
        Skipped(failing, f"command 'cat {path}; exit 3' exited with status 3")
    ]


@pytest.mark.parametrize(
    "command, status",
    [("no-such-command-here 2>/dev/null", 127), ("echo not a tar; exit 22", 22)],
)
def test_a_pipe_command_that_fails_is_named_with_its_status(command, status):
    """No tar at all (curl -f on a 404, a missing command): the command's status, not
    "broken shard", is what the report says."""
    items = list(iterate_tar(f"pipe:{command}"))
    assert items == [Skipped(f"pipe:{command}", f"command {command!r} exited with status {status}")]


def test_a_pipe_reader_that_stops_early_ends_the_command(tmp_path):
    (path,) = write_shards(tmp_path, 1, per_shard=4)
    # The command would run a minute after its output; a reader that leaves must not wait.
    samples = iterate_tar(f"pipe:cat {path}; sleep 60")
    assert next(samples)[0] == "s0/000"
    samples.close()  # kills the command (the test would take a minute otherwise)


def test_image_only_shards_are_images_for_image_methods(tmp_path):
    """Without captions (captions=False, as for SimCLR and BYOL) a shard of images alone gives
    every image; with captions (CLIP) its samples are skipped as uncaptioned."""
    paths = write_shards(tmp_path, 2, per_shard=3, captions=False)
    images = list(TarShards(paths, image_size=8, captions=False))
    assert [i["key"] for i in images] == [f"s{s}/{i:03d}" for s in range(2) for i in range(3)]
    assert all(set(i) == {"image", "key"} for i in images)
    captioned = list(TarShards(paths, image_size=8))
    assert {i.reason for i in captioned} == {"empty caption"}
