"""PersistentVolumeClaims as host directories: one PV (hostPath, Retain) bound to each claim the pods use."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from .volumes import VolumeError

PROVISIONER = "chronoshard-dev"


def claim_dir(volumes_root: Path, namespace: str, claim: str, uid: str) -> Path:
    """Where a claim's data lives: ``<state>/volumes/<namespace>/<claim>-<claim uid>``, kept after pod deletion.

    The claim's UID is part of the name because a deleted and re-created claim is a new, empty volume in a
    real cluster: deleting a ShardSet's claims must destroy its data here too, not resurrect it.
    """
    return volumes_root / namespace / f"{claim}-{uid}"


def persistent_volume(pvc: dict[str, Any], path: Path) -> dict[str, Any]:
    """A PV (hostPath, Retain) pre-bound to ``pvc``, named like a dynamically provisioned one."""
    meta, spec = pvc["metadata"], pvc.get("spec", {})
    storage = ((spec.get("resources") or {}).get("requests") or {}).get("storage", "1Gi")
    pv_spec: dict[str, Any] = {
        "capacity": {"storage": storage},
        "accessModes": spec.get("accessModes") or ["ReadWriteOnce"],
        "persistentVolumeReclaimPolicy": "Retain",
        "storageClassName": spec.get("storageClassName") or "",
        "volumeMode": spec.get("volumeMode") or "Filesystem",
        "hostPath": {"path": str(path), "type": "DirectoryOrCreate"},
        "claimRef": {
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "namespace": meta["namespace"], "name": meta["name"], "uid": meta["uid"],
        },
    }
    return {
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": f"pvc-{meta['uid']}", "annotations": {"pv.kubernetes.io/provisioned-by": PROVISIONER}},
        "spec": pv_spec,
    }


def ensure_bound(core: client.CoreV1Api, volumes_root: Path, namespace: str, claim: str) -> Path:
    """Bind the claim to a hostPath PV (creating both sides' binding if needed); return its directory."""
    try:
        pvc = core.api_client.sanitize_for_serialization(core.read_namespaced_persistent_volume_claim(claim, namespace))
    except ApiException as exc:
        if exc.status == 404:
            raise VolumeError(f'persistentvolumeclaim "{claim}" not found') from None
        raise
    if pvc["metadata"].get("deletionTimestamp"):
        raise VolumeError(f'persistentvolumeclaim "{claim}" is being deleted')
    volume_name = pvc.get("spec", {}).get("volumeName")
    if volume_name and not volume_name.startswith("pvc-"):
        existing = core.read_persistent_volume(volume_name)
        host_path = existing.spec.host_path if existing.spec is not None else None
        if host_path is None:
            raise VolumeError(f"persistentvolume {volume_name} is not a hostPath volume")
        path = Path(host_path.path)
        path.mkdir(parents=True, exist_ok=True)
        return path

    path = claim_dir(volumes_root, namespace, claim, pvc["metadata"]["uid"])
    path.mkdir(parents=True, exist_ok=True)
    pv = persistent_volume(pvc, path)
    name = pv["metadata"]["name"]
    try:
        core.create_persistent_volume(client.V1PersistentVolume.model_validate(pv))
    except ApiException as exc:
        if exc.status != 409:
            raise
    if (pvc.get("status") or {}).get("phase") == "Bound":
        return path
    if not volume_name:
        # spec.volumeName may be set once on an unbound claim; the PV binder then agrees with us.
        core.patch_namespaced_persistent_volume_claim(
            claim, namespace,
            {"metadata": {"annotations": {"pv.kubernetes.io/bind-completed": "yes"}}, "spec": {"volumeName": name}},
        )
    core.patch_persistent_volume_status(name, {"status": {"phase": "Bound"}})
    core.patch_namespaced_persistent_volume_claim_status(
        claim, namespace,
        {"status": {"phase": "Bound", "accessModes": pv["spec"]["accessModes"], "capacity": pv["spec"]["capacity"]}},
    )
    return path
