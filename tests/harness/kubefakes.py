"""Test doubles for KubeVirtSpawner's unit tests: an in-memory API server
with scriptable failures, and reflector stand-ins that read from it.

A KubeSpawner needs a kube config to exist at all; the ``fake_kubeconfig``
fixture gives it one that points at a port nothing listens on, so a request
the fakes do not intercept fails loudly instead of reaching a cluster.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
from types import SimpleNamespace

import pytest
from kubernetes_asyncio.client.rest import ApiException
from kubernetes_asyncio.config import kube_config
from kubespawner.clients import load_config

_uids = itertools.count(1)


@pytest.fixture(autouse=True)
def fake_kubeconfig(monkeypatch, tmp_path):
    """Point kubespawner at a kube config whose server is a closed port, for
    one test only: load_config() is cached process-wide and sets the client's
    global default, so the cache is cleared on both sides of the test."""
    path = tmp_path / "kubeconfig.yaml"
    path.write_text(
        "apiVersion: v1\nkind: Config\n"
        'clusters: [{name: c, cluster: {server: "https://127.0.0.1:9"}}]\n'
        "users: [{name: u, user: {token: unit-test}}]\n"
        "contexts: [{name: t, context: {cluster: c, user: u, namespace: lab}}]\n"
        "current-context: t\n"
    )
    monkeypatch.setenv("KUBECONFIG", str(path))
    # kubernetes_asyncio reads $KUBECONFIG once, at import.
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    load_config.cache_clear()
    yield path
    load_config.cache_clear()


def orm_spawner(server: str = "") -> SimpleNamespace:
    """What a Spawner reads its server name from."""
    return SimpleNamespace(name=server, server=None, last_activity=None)


class User:
    def __init__(self, name: str):
        self.name = name
        self.id = 7
        self.url = f"/user/{name}/"
        self.escaped_name = name


HUB = SimpleNamespace(
    public_host="",
    url="http://hub:8081/hub/",
    base_url="/hub/",
    api_url="http://hub:8081/hub/api",
    connect_url=None,
)


def serialize(obj):
    """A client model as the JSON dict the API server would see (camelCase)."""
    if isinstance(obj, list):
        return [serialize(o) for o in obj]
    if isinstance(obj, dict):
        return {k: serialize(v) for k, v in obj.items()}
    if hasattr(obj, "openapi_types"):
        return {
            obj.attribute_map[attr]: serialize(getattr(obj, attr))
            for attr in obj.openapi_types
            if getattr(obj, attr) is not None
        }
    return obj


class FakeKube:
    """Core, networking and custom-object APIs over one in-memory store.

    ``fail[(verb, kind)]`` is a list of exceptions raised, one per call,
    before the call behaves normally. ``linger[kind]`` is how many reads a
    deleted object stays visible (finalizers, graceful termination).
    """

    def __init__(self):
        self.objects: dict[tuple[str, str, str], dict] = {}
        self.fail: dict[tuple[str, str], list[BaseException]] = {}
        self.linger: dict[str, int] = {}
        self._lingering: dict[tuple[str, str, str], int] = {}
        self.calls: list[tuple[str, str, str]] = []

    # -- generic ---------------------------------------------------------
    async def _op(self, verb, kind, namespace, name=None, body=None, options=None):
        body = serialize(body) if body is not None and not isinstance(body, dict) else body
        name = name or (body or {}).get("metadata", {}).get("name")
        self.calls.append((verb, kind, name))
        await asyncio.sleep(0)
        script = self.fail.get((verb, kind))
        if script:
            raise script.pop(0)
        key = (kind, namespace, name)
        if verb == "create":
            if key in self.objects:
                raise ApiException(status=409, reason="AlreadyExists")
            obj = copy.deepcopy(body)
            obj["metadata"].setdefault("namespace", namespace)
            obj["metadata"]["uid"] = f"uid-{kind}-{next(_uids)}"
            self.objects[key] = obj
            return copy.deepcopy(obj)
        if key not in self.objects:
            raise ApiException(status=404, reason="NotFound")
        if verb == "read":
            if key in self._lingering:
                self._lingering[key] -= 1
                if self._lingering[key] < 0:
                    del self.objects[key], self._lingering[key]
                    raise ApiException(status=404, reason="NotFound")
            return copy.deepcopy(self.objects[key])
        if verb == "delete":
            want = ((options or {}).get("preconditions") or {}).get("uid")
            if want and want != self.objects[key]["metadata"]["uid"]:
                raise ApiException(status=409, reason="Conflict")  # precondition failed
            if self.linger.get(kind):
                self._lingering.setdefault(key, self.linger[kind])
                self.objects[key]["metadata"]["deletionTimestamp"] = "now"
            else:
                del self.objects[key]
            return {}
        if verb == "patch":
            meta = body.get("metadata", {})
            self.objects[key]["metadata"].update(copy.deepcopy(meta))
            return copy.deepcopy(self.objects[key])
        raise AssertionError(verb)

    def names(self) -> set[tuple[str, str]]:
        return {(kind, name) for kind, _, name in self.objects}

    def get(self, kind: str, name: str, namespace: str = "lab") -> dict:
        return self.objects[(kind, namespace, name)]

    def __getattr__(self, attr: str):
        # create_namespaced_secret(ns, body), read_namespaced_pod(name, ns), ...
        for verb in ("create", "read", "delete", "patch"):
            prefix = f"{verb}_namespaced_"
            if attr.startswith(prefix) and not attr.endswith("custom_object"):
                kind = attr[len(prefix) :]

                async def core(*args, _verb=verb, _kind=kind, **kw):
                    if _verb == "create":
                        return await self._op(_verb, _kind, args[0], body=args[1])
                    body = args[2] if len(args) > 2 else None
                    if _verb == "delete":
                        return await self._op(
                            _verb, _kind, args[1], name=args[0], options=kw.get("body")
                        )
                    return await self._op(_verb, _kind, args[1], name=args[0], body=body)

                return core
        raise AttributeError(attr)

    # -- custom objects ------------------------------------------------------
    async def create_namespaced_custom_object(self, group, version, ns, plural, body, **kw):
        return await self._op("create", plural, ns, body=body)

    async def get_namespaced_custom_object(self, group, version, ns, plural, name, **kw):
        return await self._op("read", plural, ns, name=name)

    async def delete_namespaced_custom_object(self, group, version, ns, plural, name, **kw):
        return await self._op("delete", plural, ns, name=name, options=kw.get("body"))

    async def patch_namespaced_custom_object(self, group, version, ns, plural, name, body, **kw):
        assert kw.get("_content_type") == "application/merge-patch+json"
        return await self._op("patch", plural, ns, name=name, body=body)


class FakeReflector:
    """Stands in for a started kubespawner reflector: ``resources`` are the
    store's objects of one kind with ``status`` overlaid."""

    def __init__(self, kube: FakeKube | None, kind: str = "", events: list | None = None):
        self.kube = kube
        self.kind = kind
        self.status: dict[str, dict] = {}
        self.missing: set[str] = set()  # names the cache has lost (a re-list after a failed watch)
        self.events = events if events is not None else []
        self.first_load_future = asyncio.get_running_loop().create_future()
        self.first_load_future.set_result(None)

    @property
    def resources(self) -> dict[str, dict]:
        out = {}
        if self.kube is None:
            return out
        for (kind, ns, name), obj in self.kube.objects.items():
            if kind == self.kind and name not in self.missing:
                obj = copy.deepcopy(obj)
                obj["status"] = copy.deepcopy(self.status.get(name, {}))
                out[f"{ns}/{name}"] = obj
        return out

    pods = resources

    async def stop(self):
        pass
