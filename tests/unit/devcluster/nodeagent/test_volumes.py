import base64
import os
import threading

import pytest
from chronoshard.devcluster.nodeagent.volumes import (
    DATA_DIR,
    VolumeError,
    project_items,
    read_snapshot,
    volume_payload,
    write_atomic,
)


def payload(gen: int, n: int = 8) -> dict[str, tuple[bytes, int]]:
    return {f"f{i}": (f"gen={gen} file={i}".encode() * 200, 0o644) for i in range(n)}


def test_layout_matches_kubelet(tmp_path):
    target = tmp_path / "vol"
    assert write_atomic(target, {"a.json": (b"{}", 0o644), "dir/b.key": (b"\x00\x01", 0o400)})
    assert (target / DATA_DIR).is_symlink()
    snapshot = os.readlink(target / DATA_DIR)
    assert snapshot.startswith("..") and snapshot != DATA_DIR
    assert os.readlink(target / "a.json") == "..data/a.json"
    assert os.readlink(target / "dir") == "..data/dir"
    assert (target / "dir" / "b.key").read_bytes() == b"\x00\x01"
    assert (target / "dir" / "b.key").stat().st_mode & 0o777 == 0o400


def test_unchanged_payload_is_not_rewritten(tmp_path):
    target = tmp_path / "vol"
    write_atomic(target, payload(1))
    before = os.readlink(target / DATA_DIR)
    assert write_atomic(target, payload(1)) is False
    assert os.readlink(target / DATA_DIR) == before


def test_update_swaps_snapshot_removes_old_files_and_links(tmp_path):
    target = tmp_path / "vol"
    write_atomic(target, {"old": (b"1", 0o644), "keep": (b"1", 0o644)})
    first = os.readlink(target / DATA_DIR)
    assert write_atomic(target, {"keep": (b"2", 0o644), "new": (b"2", 0o644)})
    assert not (target / "old").exists() and not (target / "old").is_symlink()
    assert (target / "keep").read_bytes() == b"2" and (target / "new").read_bytes() == b"2"
    assert not (target / first).exists(), "the previous snapshot directory is removed"
    leftovers = sorted(p.name for p in target.iterdir())
    assert leftovers == sorted([DATA_DIR, os.readlink(target / DATA_DIR), "keep", "new"])


def test_concurrent_reader_never_sees_a_mixed_set(tmp_path):
    target = tmp_path / "vol"
    write_atomic(target, payload(0))
    stop = threading.Event()
    seen: list[set[int]] = []
    errors: list[BaseException] = []

    def reader():
        while not stop.is_set():
            try:
                files = read_snapshot(target)
            except BaseException as exc:
                errors.append(exc)
                return
            gens = {int(v.split(b" ")[0].split(b"=")[1]) for v in files.values()}
            seen.append(gens)
            if len(files) != 8:
                errors.append(AssertionError(f"saw {len(files)} files"))

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    for gen in range(1, 60):
        write_atomic(target, payload(gen))
    stop.set()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    assert len(seen) > 20
    mixed = [g for g in seen if len(g) != 1]
    assert not mixed, f"reader saw mixed generations: {mixed[:3]}"
    assert len({next(iter(g)) for g in seen}) > 1, "the reader saw updates happen"


def test_data_link_never_missing_during_swaps(tmp_path):
    target = tmp_path / "vol"
    write_atomic(target, payload(0, 2))
    stop = threading.Event()
    misses = []

    def watch():
        while not stop.is_set():
            try:
                os.readlink(target / DATA_DIR)
            except FileNotFoundError:
                misses.append(1)

    t = threading.Thread(target=watch)
    t.start()
    for gen in range(1, 100):
        write_atomic(target, payload(gen, 2))
    stop.set()
    t.join()
    assert misses == []


@pytest.mark.parametrize("bad", ["../x", "/abs", "..data/x", "a/../../b", ""])
def test_bad_item_paths_are_refused_and_nothing_written(tmp_path, bad):
    with pytest.raises(VolumeError):
        write_atomic(tmp_path / "vol", {bad: (b"x", 0o644)})
    assert not (tmp_path / "vol").exists()


def test_secret_items_modes_and_optional():
    data = {"a": b"1", "b": b"2"}
    assert project_items(data, None, 0o644, False, "s") == {"a": (b"1", 0o644), "b": (b"2", 0o644)}
    assert project_items(data, [{"key": "b", "path": "x/y", "mode": 0o400}], 0o644, False, "s") == {
        "x/y": (b"2", 0o400)
    }
    with pytest.raises(VolumeError, match="no key 'c'"):
        project_items(data, [{"key": "c", "path": "c"}], 0o644, False, 'secret "s"')
    assert project_items(data, [{"key": "c", "path": "c"}], 0o644, True, "s") == {}


def lookup_from(objs):
    return lambda kind, name: objs.get((kind, name))


def test_volume_payload_secret_configmap_projected_downward():
    secret = {"metadata": {"name": "k", "namespace": "n"}, "data": {"v1.key": base64.b64encode(b"\xff" * 32).decode()}}
    cm = {"metadata": {"name": "c", "namespace": "n"}, "data": {"map.json": "{}"},
          "binaryData": {"bin": base64.b64encode(b"\x00").decode()}}
    lookup = lookup_from({("Secret", "k"): secret, ("ConfigMap", "c"): cm})
    assert volume_payload({"name": "x", "secret": {"secretName": "k", "defaultMode": 0o440}}, lookup) == {
        "v1.key": (b"\xff" * 32, 0o440)
    }
    assert volume_payload({"name": "x", "configMap": {"name": "c"}}, lookup) == {
        "map.json": (b"{}", 0o644), "bin": (b"\x00", 0o644)
    }
    projected = {"name": "x", "projected": {"sources": [
        {"configMap": {"name": "c", "items": [{"key": "map.json", "path": "ca.crt"}]}},
        {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}]}},
        {"serviceAccountToken": {"path": "token", "expirationSeconds": 3600}},
    ]}}
    got = volume_payload(projected, lookup, field=lambda p: {"metadata.namespace": "n"}[p],
                         token=lambda aud, exp: f"tok-{exp}")
    assert got == {"ca.crt": (b"{}", 0o644), "namespace": (b"n", 0o644), "token": (b"tok-3600", 0o644)}
    assert volume_payload({"name": "x", "emptyDir": {}}, lookup) is None


def test_missing_secret_is_a_clear_error_unless_optional():
    lookup = lookup_from({})
    with pytest.raises(VolumeError, match='secret "gone" not found'):
        volume_payload({"name": "x", "secret": {"secretName": "gone"}}, lookup)
    assert volume_payload({"name": "x", "secret": {"secretName": "gone", "optional": True}}, lookup) == {}
