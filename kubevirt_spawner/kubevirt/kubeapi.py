"""Plain async helpers for the API objects KubeSpawner's own helpers do not
handle (custom resources, NetworkPolicies) and for deletes that must be
confirmed: create-or-get, delete-until-404, and shared reflectors for
VirtualMachines, VirtualMachineInstances and their events.

Nothing here imports JupyterHub's spawner; the clients are passed in, so
tests can hand in fakes.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from jupyterhub.utils import exponential_backoff
from kubernetes_asyncio.client.rest import ApiException
from kubespawner.clients import shared_client
from kubespawner.reflector import ResourceReflector
from traitlets import Unicode

log = logging.getLogger(__name__)

KUBEVIRT_GROUP = "kubevirt.io"
KUBEVIRT_VERSION = "v1"

try:  # the transport errors a request can end in besides ApiException
    from aiohttp import ClientError as _ClientError
except ImportError:  # pragma: no cover - aiohttp comes with kubernetes_asyncio
    _ClientError = OSError


def is_retryable(exc: BaseException) -> bool:
    """Whether a failed API call is worth repeating: conflicts (409, e.g. an
    object still being deleted), throttling (429), server errors (5xx),
    timeouts and dropped connections. 4xx errors such as 403 are not."""
    if isinstance(exc, ApiException):
        return exc.status in (409, 429) or (exc.status or 0) >= 500
    return isinstance(exc, (asyncio.TimeoutError, TimeoutError, _ClientError, ConnectionError))


def retry_after(exc: BaseException, cap: float = 10.0) -> float:
    """Seconds a 429 asks the client to wait (its ``Retry-After`` header,
    at most ``cap``); 0 for anything else."""
    if not isinstance(exc, ApiException) or exc.status != 429:
        return 0.0
    raw = (exc.headers or {}).get("Retry-After", "")
    try:
        return min(cap, max(0.0, float(raw)))
    except ValueError:
        return 0.0


@dataclass(frozen=True)
class Kind:
    """How to create, read, patch and delete one kind of namespaced object."""

    name: str
    api: object
    plural: str = ""  # set for custom resources (CustomObjectsApi)

    def _call(self, verb: str, namespace: str, name: str | None = None, body=None, **kw):
        if verb == "delete" and body is not None:
            kw["body"], body = body, None  # DeleteOptions travel as a keyword
        if self.plural:
            method = {
                "create": "create_namespaced_custom_object",
                "read": "get_namespaced_custom_object",
                "patch": "patch_namespaced_custom_object",
                "delete": "delete_namespaced_custom_object",
            }[verb]
            args = [KUBEVIRT_GROUP, KUBEVIRT_VERSION, namespace, self.plural]
            if name is not None:
                args.append(name)
            if body is not None:
                args.append(body)
            return getattr(self.api, method)(*args, **kw)
        method = getattr(self.api, f"{verb}_namespaced_{self.name}")
        if verb == "create":
            return method(namespace, body, **kw)
        if verb == "patch":
            return method(name, namespace, body, **kw)
        return method(name, namespace, **kw)


async def _call_once(coro, timeout: float):
    return await asyncio.wait_for(coro, timeout)


async def create_or_get(
    kind: Kind, namespace: str, manifest: dict, *, request_timeout: float, retry_timeout: float
) -> dict:
    """Create ``manifest``; if it already exists, return the existing object.

    Transient errors are retried with backoff until ``retry_timeout``;
    anything else (403, 422 ...) is raised at once.
    """
    name = manifest["metadata"]["name"]
    result: dict = {}

    async def attempt() -> bool:
        try:
            obj = await _call_once(kind._call("create", namespace, body=manifest), request_timeout)
        except ApiException as e:
            if e.status == 409:
                try:
                    obj = await _call_once(kind._call("read", namespace, name), request_timeout)
                except Exception as e2:
                    if is_retryable(e2) or getattr(e2, "status", None) == 404:
                        return False  # deleted meanwhile, or a blip: create again
                    raise
                log.info("%s %s/%s already exists; using it", kind.name, namespace, name)
            elif is_retryable(e):
                log.warning(
                    "Creating %s %s/%s: %s %s; retrying",
                    kind.name,
                    namespace,
                    name,
                    e.status,
                    e.reason,
                )
                await asyncio.sleep(retry_after(e))
                return False
            else:
                raise
        except Exception as e:
            if not is_retryable(e):
                raise
            log.warning("Creating %s %s/%s: %r; retrying", kind.name, namespace, name, e)
            return False
        result["obj"] = _as_dict(obj)
        return True

    await exponential_backoff(
        attempt, f"Could not create {kind.name} {namespace}/{name}", timeout=retry_timeout
    )
    return result["obj"]


async def patch(
    kind: Kind,
    namespace: str,
    name: str,
    body: dict,
    *,
    request_timeout: float,
    retry_timeout: float,
) -> None:
    """Merge-patch an object, retrying transient errors."""

    async def attempt() -> bool:
        try:
            # kubernetes_asyncio would pick JSON-patch for custom objects.
            call = kind._call(
                "patch", namespace, name, body=body, _content_type="application/merge-patch+json"
            )
            await _call_once(call, request_timeout)
        except Exception as e:
            if not is_retryable(e):
                raise
            return False
        return True

    await exponential_backoff(
        attempt, f"Could not patch {kind.name} {namespace}/{name}", timeout=retry_timeout
    )


async def read_or_none(kind: Kind, namespace: str, name: str, *, request_timeout: float):
    """The object, None if the API server says 404; any other error raises.

    For deciding that something is gone: a reflector's cache can miss an
    object while it re-lists after a failed watch; only a 404 is proof.
    """
    try:
        return _as_dict(await _call_once(kind._call("read", namespace, name), request_timeout))
    except ApiException as e:
        if e.status == 404:
            return None
        raise


async def ensure_gone(
    kind: Kind,
    namespace: str,
    name: str,
    *,
    request_timeout: float,
    retry_timeout: float,
    delete_kwargs: dict | None = None,
    uid: str | None = None,
) -> int:
    """Delete an object and wait until it is gone.

    The object is read first (unless ``uid`` says which one is meant) and
    only that one is deleted (a uid precondition): a delete that lands late,
    after its request timed out here, can never remove a newer object of the
    same name, such as the one the next start creates. Gone means a read
    returns 404, or finds an object of that name with another uid.

    Every transient error (409, 429, 5xx, timeouts, dropped connections) on
    delete or read is retried with backoff (after a 429, no sooner than its
    ``Retry-After`` says), so a stop never ends with the object still there;
    a non-transient error (e.g. 403) is raised. Returns the number of
    requests made (for logs and tests).
    """
    requests = 0
    target = uid
    delete_accepted = False  # a DELETE of ``target`` was answered 2xx
    verify = False  # a DELETE got 409: read whether it is still ours first
    still_there = 0

    async def transient(e: BaseException, what: str) -> bool:
        if not is_retryable(e):
            raise e
        detail = f"{e.status} {e.reason}" if isinstance(e, ApiException) else repr(e)
        log.warning("%s %s %s/%s: %s; retrying", what, kind.name, namespace, name, detail)
        await asyncio.sleep(retry_after(e))
        return False

    async def check() -> bool | None:
        """True: gone; False: could not tell, retry; None: ours is there."""
        nonlocal requests, target
        requests += 1
        try:
            obj = _as_dict(await _call_once(kind._call("read", namespace, name), request_timeout))
        except ApiException as e:
            if e.status == 404:
                return True
            return await transient(e, "Reading")
        except Exception as e:
            return await transient(e, "Reading")
        found = (obj.get("metadata") or {}).get("uid")
        if target is None:
            target = found
        elif found != target:
            return True  # ours is gone; a newer object holds the name
        return None

    async def attempt() -> bool:
        nonlocal requests, delete_accepted, verify, still_there
        if target is None or verify:
            seen = await check()
            if seen is not None:
                return seen
            verify = False
        elif delete_accepted:
            seen = await check()
            if seen is not None:
                return seen
            # Still there: finalizers or graceful termination at work. Every
            # few rounds delete again, in case the accepted delete was lost.
            still_there += 1
            if still_there % 5:
                return False
            delete_accepted = False
        requests += 1
        options = {"preconditions": {"uid": target}} if target else None
        try:
            call = kind._call("delete", namespace, name, body=options, **(delete_kwargs or {}))
            await _call_once(call, request_timeout)
        except ApiException as e:
            if e.status == 404:
                return True
            verify = e.status == 409  # a conflict, or another object by now
            return await transient(e, "Deleting")
        except Exception as e:
            return await transient(e, "Deleting")
        delete_accepted = True
        seen = await check()
        return bool(seen)

    await exponential_backoff(
        attempt,
        f"{kind.name} {namespace}/{name} still exists after {retry_timeout:.0f}s of deleting",
        timeout=retry_timeout,
    )
    log.info("%s %s/%s is gone", kind.name, namespace, name)
    return requests


def _as_dict(obj) -> dict:
    if isinstance(obj, dict):
        return obj
    to_dict = getattr(obj, "to_dict", None)
    return to_dict() if to_dict else {}


# -- reflectors -----------------------------------------------------------


class _CustomObjectLister:
    """Gives CustomObjectsApi the ``list_namespaced(namespace=..., **kw)``
    shape that kubespawner's ResourceReflector calls for list and watch."""

    def __init__(self, api, plural: str):
        self._api = api
        self._plural = plural

    async def list_namespaced(self, namespace: str, **kwargs):
        """List (or, with watch=True, watch) one custom resource as raw JSON."""
        return await self._api.list_namespaced_custom_object(
            KUBEVIRT_GROUP, KUBEVIRT_VERSION, namespace, self._plural, **kwargs
        )


class KubeVirtReflector(ResourceReflector):
    """A shared watch of one KubeVirt resource in one namespace."""

    plural = Unicode("", help="Resource name, e.g. virtualmachines.")
    list_method_name = "list_namespaced"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.api = _CustomObjectLister(shared_client("CustomObjectsApi"), self.plural)


class VirtualMachineReflector(KubeVirtReflector):
    kind = "virtualmachines"
    plural = "virtualmachines"


class VirtualMachineInstanceReflector(KubeVirtReflector):
    kind = "virtualmachineinstances"
    plural = "virtualmachineinstances"


def kinds(core_api, networking_api, custom_api) -> dict[str, Kind]:
    """The kinds a lab server is made of, by name."""
    return {
        "pod": Kind("pod", core_api),
        "secret": Kind("secret", core_api),
        "service": Kind("service", core_api),
        "network_policy": Kind("network_policy", networking_api),
        "virtualmachine": Kind("virtualmachine", custom_api, plural="virtualmachines"),
    }


__all__ = [
    "Kind",
    "VirtualMachineInstanceReflector",
    "VirtualMachineReflector",
    "create_or_get",
    "ensure_gone",
    "is_retryable",
    "kinds",
    "patch",
]
