"""A container's environment, command line and mount-path mapping, computed from the pod spec (pure)."""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Mapping
from typing import Any

Lookup = Callable[[str, str], Mapping[str, Any] | None]


class EnvError(Exception):
    """The container's environment cannot be built (missing Secret/ConfigMap/key, unsupported source)."""


def expand(text: str, mapping: Mapping[str, str]) -> str:
    """Kubernetes ``$(VAR)`` expansion: defined vars are replaced, ``$$`` is a literal ``$``, else verbatim."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch != "$" or i + 1 >= n:
            out.append(ch)
            i += 1
            continue
        nxt = text[i + 1]
        if nxt == "$":
            out.append("$")
            i += 2
        elif nxt == "(":
            end = text.find(")", i + 2)
            if end == -1:
                out.append(text[i:])
                break
            name = text[i + 2 : end]
            out.append(mapping[name] if name in mapping else text[i : end + 1])
            i = end + 1
        else:
            out.append(ch)
            i += 1
    return "".join(out)


_SUBSCRIPT = re.compile(r"^metadata\.(labels|annotations)\['(.+)'\]$")


def field_ref(pod: Mapping[str, Any], path: str) -> str:
    """Value of a downward-API ``fieldRef.fieldPath`` for this pod."""
    meta, spec, status = pod.get("metadata", {}), pod.get("spec", {}), pod.get("status", {}) or {}
    simple = {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName"),
        "status.hostIP": status.get("hostIP"),
        "status.podIP": status.get("podIP"),
        "status.podIPs": ",".join(ip.get("ip", "") for ip in status.get("podIPs") or []),
        "status.hostIPs": ",".join(ip.get("ip", "") for ip in status.get("hostIPs") or []),
    }
    if path in simple:
        return simple[path] or ""
    match = _SUBSCRIPT.match(path)
    if match:
        return (meta.get(match.group(1)) or {}).get(match.group(2), "")
    raise EnvError(f"unsupported fieldRef {path!r}")


def _key_ref(kind: str, ref: Mapping[str, Any], lookup: Lookup) -> str | None:
    name, key, optional = ref.get("name", ""), ref["key"], bool(ref.get("optional"))
    obj = lookup(kind, name)
    if obj is None:
        if optional:
            return None
        raise EnvError(f'{kind.lower()} "{name}" not found')
    if kind == "Secret":
        data = {k: base64.b64decode(v or "").decode() for k, v in (obj.get("data") or {}).items()}
    else:
        data = dict(obj.get("data") or {})
    if key not in data:
        if optional:
            return None
        raise EnvError(f'couldn\'t find key {key} in {kind} {obj["metadata"]["namespace"]}/{name}')
    return data[key]


def container_env(
    pod: Mapping[str, Any], container: Mapping[str, Any], lookup: Lookup, base: Mapping[str, str]
) -> dict[str, str]:
    """The process environment: ``base`` (the "image" env), then envFrom, then env in order, as kubelet does."""
    env: dict[str, str] = dict(base)
    for src in container.get("envFrom") or []:
        env.update(_env_from(src, lookup))
    for var in container.get("env") or []:
        value = _env_value(pod, var, lookup, env)
        if value is not None:
            env[var["name"]] = value
    return env


def _env_from(src: Mapping[str, Any], lookup: Lookup) -> dict[str, str]:
    """The variables one envFrom source brings: every key of a ConfigMap or Secret, with the source's prefix."""
    prefix = src.get("prefix", "")
    if "configMapRef" in src:
        kind, ref = "ConfigMap", src["configMapRef"]
    elif "secretRef" in src:
        kind, ref = "Secret", src["secretRef"]
    else:
        raise EnvError(f"unsupported envFrom source {sorted(src)}")
    obj = lookup(kind, ref.get("name", ""))
    if obj is None:
        if ref.get("optional"):
            return {}
        raise EnvError(f'{kind.lower()} "{ref.get("name", "")}" not found')
    return {
        prefix + key: base64.b64decode(value).decode() if kind == "Secret" else value
        for key, value in (obj.get("data") or {}).items()
    }


def _env_value(
    pod: Mapping[str, Any], var: Mapping[str, Any], lookup: Lookup, env: Mapping[str, str]
) -> str | None:
    """One env entry's value (None: an optional key that is missing, so the variable is not set)."""
    if "valueFrom" not in var:
        # Each value may refer to variables defined before it (and to the base env).
        return expand(var.get("value", ""), env)
    source = var["valueFrom"]
    if "fieldRef" in source:
        return field_ref(pod, source["fieldRef"]["fieldPath"])
    if "secretKeyRef" in source:
        return _key_ref("Secret", source["secretKeyRef"], lookup)
    if "configMapKeyRef" in source:
        return _key_ref("ConfigMap", source["configMapKeyRef"], lookup)
    raise EnvError(f"unsupported env source {sorted(source)} for {var['name']}")


def mount_map(container: Mapping[str, Any], volume_dirs: Mapping[str, str]) -> dict[str, str]:
    """{mountPath in the container: host directory or file} for each volumeMount (subPath honoured)."""
    out: dict[str, str] = {}
    for mount in container.get("volumeMounts") or []:
        vol = mount["name"]
        if vol not in volume_dirs:
            raise EnvError(f"volumeMount {vol!r} names no volume of the pod")
        host = volume_dirs[vol]
        sub = mount.get("subPath")
        if sub:
            host = f"{host.rstrip('/')}/{sub}"
        out[mount["mountPath"].rstrip("/") or "/"] = host
    return out


def rewrite_paths(text: str, mounts: Mapping[str, str]) -> str:
    """Replace container mount paths by their host directories, whole path components only.

    Without a container runtime there is no mount namespace, so ``/etc/chronoshard/keyring`` in an
    argument must become the directory the agent materialised; ``--x=/etc/a/f.json`` and ``/etc/a``
    match, ``/etc/ab`` does not. The longest mount path wins (a mount inside another mount).
    """
    if not mounts:
        return text
    alternatives = "|".join(re.escape(p) for p in sorted(mounts, key=len, reverse=True) if p != "/")
    if not alternatives:
        return text
    pattern = re.compile(rf"(?<![\w.\-/])({alternatives})(?=/|$|[^\w.\-])")
    return pattern.sub(lambda m: mounts[m.group(1)], text)


def command_line(container: Mapping[str, Any], env: Mapping[str, str], mounts: Mapping[str, str]) -> list[str]:
    """argv from ``command`` + ``args`` with ``$(VAR)`` expanded, then mount paths mapped to host paths."""
    argv = [*(container.get("command") or []), *(container.get("args") or [])]
    if not argv:
        # With no image there is no ENTRYPOINT to fall back to.
        raise EnvError(f"container {container.get('name')!r} has no command (images are not run)")
    return [rewrite_paths(expand(arg, env), mounts) for arg in argv]
