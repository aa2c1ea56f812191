import base64

import pytest
from chronoshard.devcluster.nodeagent.env import (
    EnvError,
    command_line,
    container_env,
    expand,
    field_ref,
    mount_map,
    rewrite_paths,
)

POD = {
    "metadata": {"name": "shards-1", "namespace": "ns", "uid": "u-1", "labels": {"app": "x"}},
    "spec": {"nodeName": "chronoshard-dev", "serviceAccountName": "sa"},
    "status": {"podIP": "127.0.0.3", "hostIP": "127.0.0.1", "podIPs": [{"ip": "127.0.0.3"}]},
}


def test_expand_follows_kubernetes_rules():
    env = {"A": "1", "B": "two"}
    assert expand("$(A)-$(B)", env) == "1-two"
    assert expand("$(MISSING)", env) == "$(MISSING)"
    assert expand("$$(A)", env) == "$(A)"
    assert expand("cost $5 $", env) == "cost $5 $"
    assert expand("$(A", env) == "$(A"


def test_field_refs():
    assert field_ref(POD, "metadata.name") == "shards-1"
    assert field_ref(POD, "status.podIP") == "127.0.0.3"
    assert field_ref(POD, "metadata.labels['app']") == "x"
    assert field_ref(POD, "spec.nodeName") == "chronoshard-dev"
    with pytest.raises(EnvError, match="unsupported fieldRef"):
        field_ref(POD, "spec.containers")


def lookup(kind, name):
    objs = {
        ("Secret", "s"): {"metadata": {"name": "s", "namespace": "ns"},
                          "data": {"tok": base64.b64encode(b"t0p").decode()}},
        ("ConfigMap", "c"): {"metadata": {"name": "c", "namespace": "ns"}, "data": {"level": "debug", "x": "y"}},
    }
    return objs.get((kind, name))


def test_container_env_sources_in_order():
    container = {
        "envFrom": [{"configMapRef": {"name": "c"}, "prefix": "CM_"}],
        "env": [
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "URL", "value": "http://$(POD_IP):7400"},
            {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "tok"}}},
            {"name": "LEVEL", "valueFrom": {"configMapKeyRef": {"name": "c", "key": "level"}}},
            {"name": "OPT", "valueFrom": {"secretKeyRef": {"name": "gone", "key": "k", "optional": True}}},
        ],
    }
    env = container_env(POD, container, lookup, {"PATH": "/bin"})
    assert env == {
        "PATH": "/bin", "CM_level": "debug", "CM_x": "y", "POD_IP": "127.0.0.3",
        "URL": "http://127.0.0.3:7400", "TOKEN": "t0p", "LEVEL": "debug",
    }


def test_missing_refs_are_clear_errors():
    with pytest.raises(EnvError, match='secret "gone" not found'):
        container_env(POD, {"env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "gone", "key": "k"}}}]},
                      lookup, {})
    with pytest.raises(EnvError, match="couldn't find key nope"):
        container_env(POD, {"env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "c", "key": "nope"}}}]},
                      lookup, {})


def test_rewrite_paths_whole_components_longest_first():
    mounts = {"/etc/chronoshard/keyring": "/s/keyring", "/etc/chronoshard": "/s/etc", "/var/lib/chronoshard": "/s/pvc"}
    assert rewrite_paths("/etc/chronoshard/keyring", mounts) == "/s/keyring"
    assert rewrite_paths("/etc/chronoshard/keyring/v1.key", mounts) == "/s/keyring/v1.key"
    assert rewrite_paths("/etc/chronoshard/partitions/map.json", mounts) == "/s/etc/partitions/map.json"
    assert rewrite_paths("--data-dir=/var/lib/chronoshard/predictor", mounts) == "--data-dir=/s/pvc/predictor"
    assert rewrite_paths("/etc/chronoshardx", mounts) == "/etc/chronoshardx"
    assert rewrite_paths("/opt/etc/chronoshard", mounts) == "/opt/etc/chronoshard"
    assert rewrite_paths("http://x/etc/chronoshard", mounts) == "http://x/etc/chronoshard"


def test_command_line_expands_then_maps_mounts():
    container = {
        "name": "node", "command": ["chronoshard-node"],
        "args": ["--host", "$(POD_IP)", "--keyring-dir", "/etc/chronoshard/keyring",
                 "--data-dir", "/var/lib/chronoshard"],
        "volumeMounts": [{"name": "keyring", "mountPath": "/etc/chronoshard/keyring"},
                         {"name": "data", "mountPath": "/var/lib/chronoshard", "subPath": "node"}],
    }
    mounts = mount_map(container, {"keyring": "/st/pod/volumes/keyring", "data": "/st/volumes/ns/data-shards-1"})
    argv = command_line(container, {"POD_IP": "127.0.0.3"}, mounts)
    assert argv == ["chronoshard-node", "--host", "127.0.0.3", "--keyring-dir", "/st/pod/volumes/keyring",
                    "--data-dir", "/st/volumes/ns/data-shards-1/node"]


def test_no_command_and_unknown_volume_are_errors():
    with pytest.raises(EnvError, match="has no command"):
        command_line({"name": "c", "image": "busybox"}, {}, {})
    with pytest.raises(EnvError, match="names no volume"):
        mount_map({"volumeMounts": [{"name": "nope", "mountPath": "/x"}]}, {})
