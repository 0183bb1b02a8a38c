"""``contrastive data nga`` (contrastive/tools/nga.py, nga_catalog.py) against a loopback
server with every failure the NGA's service can show: retries, unsafe rows and redirects,
resumes after Ctrl-C and SIGKILL, file permissions and the manifest."""

from __future__ import annotations

import json
import os
import signal
from collections import Counter
from pathlib import Path

import pytest
from nga_server import NGAServer, Spawned, partial_files, stalled_collection, uuid_of, wait_for

from contrastive.cli import main as cli_main
from contrastive.tools import nga, nga_catalog


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")  # never send loopback to a proxy
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    srv = NGAServer()
    yield srv
    srv.close()


# Every failure the issue names, and what the tool must do with it.
GOOD = {
    101: {
        "title": 'The "Mill", at dusk',
        "attribution": "Rembrandt van Rijn",
        "medium": "oil on canvas",
        "beginyear": 1650,
    },
    102: {
        "classification": "Print",
        "attribution": "Albrecht Dürer",
        "medium": "engraving",
        "beginyear": 1514,
    },
    103: {"kind": "500-once"},
    104: {"kind": "drop-once"},
    116: {"classification": "Drawing", "medium": "red chalk", "beginyear": ""},
}
FAILING = {
    105: ("404", "http 404"),
    106: ("truncated", "truncated"),
    107: ("oversized", "too large"),
    108: ("oversized-stream", "too large"),
    109: ("html", "wrong content type"),
    110: ("corrupt", "corrupt image"),
}


def collection(server: NGAServer) -> list[dict]:
    """The CSV rows: good, failing, and three unsafe ones (path traversal, foreign host)."""
    artworks = [{"objectid": oid, **spec} for oid, spec in GOOD.items()]
    artworks += [{"objectid": oid, "kind": kind} for oid, (kind, _) in FAILING.items()]
    artworks += [
        # Path traversal in the uuid and the iiifurl.
        {"objectid": 111, "uuid": "../../../escaped", "iiifurl": f"{server.url}/iiif/../../x"},
        # A well-formed uuid whose iiifurl climbs out of the image service, and one elsewhere.
        {"objectid": 112, "iiifurl": f"{server.url}/iiif/../data/objects.csv"},
        {"objectid": 113, "iiifurl": f"http://example.invalid/iiif/{uuid_of(113)}"},
        # An object id that is not an integer, in both tables.
        {"objectid": "../../114", "uuid": uuid_of(114)},
        # Only an alternate view: not downloaded.
        {"objectid": 115, "viewtype": "alternate"},
    ]
    return artworks


def run_tool(server: NGAServer, root: Path, *extra: str) -> int:
    return nga.main([*server.args(root), *extra])


def files_under(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*") if p.is_file()}


def test_end_to_end_every_failure_kind(server, tmp_path, capsys):
    server.publish(collection(server))
    root = tmp_path / "nga"
    assert run_tool(server, root) == 0
    out, err = capsys.readouterr()

    good = sorted(GOOD)
    assert files_under(root) == {
        "manifest.jsonl",
        "csv/objects.csv",
        "csv/published_images.csv",
        *(f"images/{oid}.jpg" for oid in good),
    }  # no partial file, and nothing from a failed or unsafe row
    assert files_under(tmp_path) == {f"nga/{f}" for f in files_under(root)}  # nothing escaped
    for oid in good:  # the bytes the server had, whole
        assert (root / f"images/{oid}.jpg").read_bytes() == server.images[uuid_of(oid)]
    assert all("/full/!48,48/0/default.jpg" in p for p in server.paths if p.startswith("/iiif"))

    # Retried: 500 and a dropped connection once each; truncated up to the retry limit.
    assert server.image_requests(103) == 2 and server.image_requests(104) == 2
    assert server.image_requests(106) == 3 and server.image_requests(110) == 3
    # Not retried: 404, oversized, wrong type. Never requested: unsafe rows, alternate views.
    for oid in (105, 107, 108, 109):
        assert server.image_requests(oid) == 1, oid
    assert not any("escaped" in p or "example" in p or "/x" in p for p in server.paths)
    assert server.image_requests(115) == 0

    summary = out.splitlines()[0]
    assert summary == (
        f"nga: 5 of 11 images in {root / 'images'}: 5 downloaded, 0 already present, 6 failed "
        "(too large: 2, corrupt image: 1, http 404: 1, truncated: 1, wrong content type: 1); "
        "4 unsafe CSV rows skipped"
    )
    failed_lines = [line for line in out.splitlines() if line.startswith("nga: failed")]
    assert len(failed_lines) == 5 and "objectid 105: http 404" in failed_lines[0]
    assert "nga: skipped unsafe row (objectid '111'): uuid '../../../escaped' is not a UUID" in out
    assert "example.invalid" in out and "(objectid '../../114'): objectid" in out
    assert f"nga: manifest {root / 'manifest.jsonl'} (5 images)" in out
    # The bars: each CSV's bytes, then the images with their rate and counts.
    final = err.split("\r")[-1] if "\r" in err else err
    assert "nga: objects.csv: 100%" in err and "nga: published_images.csv: 100%" in err
    assert "nga: images: 100%" in final and "11/11" in final and "img/s" in final
    assert "5 downloaded, 0 already present, 6 failed" in final

    rows = nga_catalog.read_manifest(root)
    assert [r["objectid"] for r in rows] == good
    first = rows[0]
    assert first == {
        "path": "images/101.jpg",
        "objectid": 101,
        "uuid": uuid_of(101),
        "title": 'The "Mill", at dusk',
        "artist": "Rembrandt van Rijn",
        "classification": "Painting",
        "medium": "oil on canvas",
        "year": 1650,
        "displaydate": "c. 1650",
    }
    assert rows[1]["artist"] == "Albrecht Dürer" and rows[1]["classification"] == "Print"
    assert rows[-1]["year"] is None  # no beginyear in the CSV


def test_each_worker_keeps_one_connection_for_all_its_images(server, tmp_path, capsys):
    """40 images on 4 threads: at most 4 connections for the images and 1 for the two CSVs
    (urllib made one per request: 42), every request answered on a kept connection."""
    server.publish([{"objectid": oid} for oid in range(200, 240)])
    assert run_tool(server, tmp_path / "nga", "--workers=4") == 0
    assert "40 downloaded" in capsys.readouterr().out
    assert sum(server.requests.values()) == 42
    assert 2 <= server.connections <= 5, server.connections


def test_a_connection_the_server_closed_is_replaced_without_a_failure(server, tmp_path):
    """A kept connection the server closed while idle (its keep-alive timeout): the next
    request notices before any answer and goes again on a new connection, not as a retry."""
    from contrastive.tools.fetch import Client

    server.publish([{"objectid": 300}, {"objectid": 301}])
    client = Client("test", retries=0)
    base = f"{server.url}/iiif/{uuid_of(300)}/full/!48,48/0/default.jpg"
    client.download(base, tmp_path / "a.jpg", 1 << 20)
    for conn in client.connections._all:  # the server side hangs up, as after its timeout
        conn.sock.shutdown(__import__("socket").SHUT_RDWR)
    client.download(base.replace(uuid_of(300), uuid_of(301)), tmp_path / "b.jpg", 1 << 20)
    assert (tmp_path / "b.jpg").read_bytes() == server.images[uuid_of(301)]
    assert server.connections == 2 and client.connections.opened == 2
    client.close()


def test_a_second_run_resumes_and_fetches_only_what_is_missing(server, tmp_path, capsys):
    server.publish(collection(server))
    root = tmp_path / "nga"
    assert run_tool(server, root) == 0
    manifest = (root / "manifest.jsonl").read_bytes()
    mtimes = {p: p.stat().st_mtime_ns for p in (root / "images").iterdir()}
    before = Counter(server.requests)
    capsys.readouterr()

    server.kinds[uuid_of(105)] = "ok"  # the 404 is fixed upstream
    assert run_tool(server, root) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"nga: 6 of 11 images in {root / 'images'}: 1 downloaded, 5 already")
    for oid in GOOD:  # kept, not fetched again
        assert server.requests[f"/iiif/{uuid_of(oid)}"] == before[f"/iiif/{uuid_of(oid)}"]
    assert all(p.stat().st_mtime_ns == t for p, t in mtimes.items())
    rows = nga_catalog.read_manifest(root)
    assert [r["objectid"] for r in rows] == sorted([*GOOD, 105])
    assert (root / "manifest.jsonl").read_bytes().startswith(manifest.split(b"\n")[0])

    server.csvs.clear()  # the tables saved by the last run serve again
    assert run_tool(server, root, "--reuse_csv") == 0
    assert ": 0 downloaded, 6 already present" in capsys.readouterr().out


def test_filters_limit_and_merging_runs_into_one_manifest(server, tmp_path, capsys):
    kinds = {1: "Painting", 2: "Print", 3: "Painting", 4: "Drawing", 5: "Painting", 6: "Painting"}
    server.publish([{"objectid": i, "classification": c} for i, c in kinds.items()])
    root = tmp_path / "nga"
    assert run_tool(server, root, "--classification=print", "--classification=DRAWING") == 0
    assert sorted(os.listdir(root / "images")) == ["2.jpg", "4.jpg"]
    assert run_tool(server, root, "--classification", "Painting,sculpture", "--limit=2") == 0
    paintings = set(os.listdir(root / "images")) - {"2.jpg", "4.jpg"}
    assert len(paintings) == 2 and all(kinds[int(p[:-4])] == "Painting" for p in paintings)
    # The manifest holds both runs' images: the first run's rows were merged, not dropped.
    rows = nga_catalog.read_manifest(root)
    assert sorted(r["path"] for r in rows) == sorted(
        f"images/{p}" for p in os.listdir(root / "images")
    )
    # --limit picks the same artworks every time.
    capsys.readouterr()
    assert run_tool(server, root, "--classification=painting", "--limit=2") == 0
    assert ": 0 downloaded, 2 already present, 0 failed" in capsys.readouterr().out


def test_nothing_to_do_is_a_one_line_error(server, tmp_path, capsys):
    server.publish(collection(server))
    assert run_tool(server, tmp_path / "a", "--classification=tapestry") == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: no artwork with a primary image with classification")
    assert "Painting (" in err and "Print (1)" in err

    server.csvs.pop("objects.csv")
    assert run_tool(server, tmp_path / "b") == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == f"error: could not fetch objects.csv (http 404): {server.url}/data/objects.csv"

    server.publish([{"objectid": 1, "kind": "404"}])
    assert run_tool(server, tmp_path / "c") == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: not one image could be downloaded (first failure: http 404")


def test_a_csv_without_the_expected_columns_is_a_one_line_error(server, tmp_path, capsys):
    server.publish([{"objectid": 1}])
    server.csvs["objects.csv"] = b"id,name\n1,x\n"
    assert run_tool(server, tmp_path) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (
        f"error: {tmp_path / 'csv' / 'objects.csv'}: no column 'objectid' (separator ','); its "
        "columns are ['id', 'name']"
    )


def test_a_manifest_that_is_not_utf8_stops_the_run_before_any_download(server, tmp_path, capsys):
    server.publish([{"objectid": 1}])
    root = tmp_path / "nga"
    root.mkdir()
    (root / "manifest.jsonl").write_bytes(b'{"title": "caf\xe9"}\n')
    assert run_tool(server, root) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    manifest = root / "manifest.jsonl"
    assert err == f"error: {manifest}: not UTF-8 text at byte 14 (0xe9); save it as UTF-8"
    assert server.paths == [] and manifest.read_bytes() == b'{"title": "caf\xe9"}\n'


def test_the_contrastive_data_command_dispatches_to_the_tool(server, tmp_path, capsys):
    server.publish([{"objectid": 7}])
    cli_main(["data", "nga", *server.args(tmp_path)])
    assert (tmp_path / "images/7.jpg").is_file()
    server.csvs.clear()
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["data", "nga", *server.args(tmp_path / "x")])
    assert exit_info.value.code == 1
    for argv, code in ((["data"], 2), (["data", "nope"], 2), (["data", "--help"], 0)):
        with pytest.raises(SystemExit) as exit_info:
            cli_main(argv)
        assert exit_info.value.code == code
    assert "unknown data tool 'nope'" in capsys.readouterr().err


def test_ctrl_c_stops_cleanly_and_a_second_run_resumes(server, tmp_path, capsys):
    ids = stalled_collection(server)
    root = tmp_path / "nga"
    child = Spawned(server, root)
    try:
        # Every other image is on disk, 203 is half-way through its body.
        wait_for(server.stalled.is_set, "the stalled download")
        wait_for(lambda: len(list(root.glob("images/*.jpg"))) == len(ids) - 1, "the others")
        child.proc.send_signal(signal.SIGINT)
        wait_for(lambda: any("interrupted" in line for line in child.err), "the interrupt")
        server.release.set()  # the connection closes; the worker sees the stop
        code, out, err = child.finish()
    finally:
        child.proc.kill()
    assert code == 130, err
    assert "run the same command again to resume" in err
    assert files_under(root / "images") == {f"{i}.jpg" for i in ids if i != 203}  # no .part
    assert len(nga_catalog.read_manifest(root)) == len(ids) - 1  # what finished is in the manifest

    assert run_tool(server, root) == 0
    out = capsys.readouterr().out
    assert f": 1 downloaded, {len(ids) - 1} already present, 0 failed" in out
    assert files_under(root / "images") == {f"{i}.jpg" for i in ids}
    assert (root / "images/203.jpg").read_bytes() == server.images[uuid_of(203)]
    assert len(nga_catalog.read_manifest(root)) == len(ids)


def test_a_killed_run_leaves_no_partial_image_and_the_next_run_cleans_up(server, tmp_path):
    ids = stalled_collection(server)
    root = tmp_path / "nga"
    child = Spawned(server, root)
    try:
        wait_for(server.stalled.is_set, "the stalled download")
        wait_for(lambda: partial_files(root / "images"), "the temporary file of 203")
        child.proc.kill()  # SIGKILL: no chance to clean up
        child.finish()
    finally:
        child.proc.kill()
    server.release.set()
    left = {p.name.split(".")[1] for p in partial_files(root / "images")}
    assert "203" in left  # the half image is a temporary file, and never got its name
    assert not any((root / f"images/{oid}.jpg").exists() for oid in left)

    assert run_tool(server, root) == 0
    assert files_under(root / "images") == {f"{i}.jpg" for i in ids}  # the temp file is gone


def test_redirects_under_the_image_base_are_followed_and_others_refused(server, tmp_path, capsys):
    server.publish([{"objectid": 1, "kind": "redirect"}, {"objectid": 2, "kind": "redirect-out"}])
    root = tmp_path / "nga"
    assert run_tool(server, root) == 0
    out = capsys.readouterr().out
    # 1: to /iiif/moved/<uuid>/full/!48,48/0/default.jpg, under the base with IIIF's "!" and ",".
    assert f"/iiif/moved/{uuid_of(1)}/full/!48,48/0/default.jpg" in server.paths
    assert (root / "images/1.jpg").read_bytes() == server.images[uuid_of(1)]
    # 2: to the CSVs, outside the image service: refused, not followed, not retried.
    assert "1 failed (unsafe redirect: 1)" in out
    assert f"failed objectid 2: unsafe redirect: {server.url}/iiif/{uuid_of(2)}/full/" in out
    assert server.paths.count("/data/objects.csv") == 1  # only the tool's own fetch of it
    assert not (root / "images/2.jpg").exists()


def test_files_get_the_users_umask_like_any_other_tool(server, tmp_path):
    server.publish([{"objectid": i} for i in (1, 2)])
    old = os.umask(0o002)  # group-writable, as on a shared project folder
    try:
        (tmp_path / "reference").write_bytes(b"")  # what open() gives under this umask
        assert run_tool(server, tmp_path / "nga") == 0
    finally:
        os.umask(old)
    expected = (tmp_path / "reference").stat().st_mode & 0o777
    assert expected == 0o664
    written = [p for p in (tmp_path / "nga").rglob("*") if p.is_file()]
    assert len(written) == 5  # two images, the manifest and the two tables
    assert {str(p.relative_to(tmp_path)): p.stat().st_mode & 0o777 for p in written} == {
        str(p.relative_to(tmp_path)): expected for p in written
    }


def test_read_manifest_takes_no_path_unchecked(tmp_path):
    rows = [
        {"path": "images/1.jpg", "objectid": 1},
        {"path": "../outside.jpg", "objectid": 2},
        {"path": "images/3.jpg", "objectid": 4},  # a path that is not its own object's
        {"path": "/etc/passwd", "objectid": 5},
        {"path": "images/6.jpg", "objectid": "6"},
        [1, 2],
    ]
    text = "\n".join(json.dumps(r) for r in rows) + "\nnot json\n"
    (tmp_path / "manifest.jsonl").write_text(text)
    assert [r["path"] for r in nga_catalog.read_manifest(tmp_path)] == ["images/1.jpg"]
