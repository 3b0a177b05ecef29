"""Apply and remove the agent's objects with the ``kubernetes`` client.

Create-or-compare-and-patch: an object that already holds every field we
manage is left alone (so a second ``connect`` changes nothing); one that
differs gets a JSON merge patch of the desired object. Kubeconfigs with
client-go exec plugins work because the ``kubernetes`` client runs them
itself (``config.new_client_from_config``).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Any, Literal

import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.config.config_exception import ConfigException

from client.errors import CliError, ClusterUnreachable, ConfigError
from client.manifests import object_path

__all__ = ["ClusterUnreachable", "KubeTarget", "is_subset"]

log = logging.getLogger("client")

Outcome = Literal["created", "updated", "unchanged", "deleted", "absent"]
# Seconds per API call: the cluster is a few hops away at most; a hung API
# server must not hang `arcctl connect`.
REQUEST_TIMEOUT = 15


def is_subset(want: object, have: object) -> bool:
    """Whether ``have`` already holds everything in ``want`` (the server may
    add defaults and status; lists must match element by element)."""
    if isinstance(want, dict):
        return isinstance(have, dict) and all(is_subset(v, have.get(k)) for k, v in want.items())
    if isinstance(want, list):
        return isinstance(have, list) and len(want) == len(have) and all(
            is_subset(w, h) for w, h in zip(want, have, strict=True))
    return bool(want == have)


class KubeTarget:
    """One cluster, from a kubeconfig file and context.

    Args:
        kubeconfig: file (None: ``$KUBECONFIG`` or ``~/.kube/config``).
        context: context name (None: the current context).

    Raises:
        ConfigError: the kubeconfig is missing or malformed.
    """

    def __init__(self, kubeconfig: str | None = None, context: str | None = None) -> None:
        configuration = k8s.Configuration()
        try:
            k8s_config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=kubeconfig, context=context, client_configuration=configuration,
                persist_config=False)
        except (ConfigException, OSError, TypeError, ValueError) as err:
            where = kubeconfig or "the default kubeconfig"
            raise ConfigError(f"cannot use {where}"
                              + (f" context {context!r}" if context else "")
                              + f": {str(err).splitlines()[0][:200]}; pass --kube-config/--kube-context"
                              ) from None
        # One attempt: "unreachable" should be said at once, not after retries
        # (and without urllib3's retry warnings).
        configuration.retries = 0
        self.api = k8s.ApiClient(configuration)
        self.host = str(self.api.configuration.host)
        self.context = context or self._current_context(kubeconfig)

    @staticmethod
    def _current_context(kubeconfig: str | None) -> str:
        try:
            _, current = k8s_config.list_kube_config_contexts(  # type: ignore[no-untyped-call]
                config_file=kubeconfig)
            return str(current.get("name", ""))
        except (ConfigException, OSError, TypeError, ValueError):
            return ""

    def close(self) -> None:
        self.api.close()  # type: ignore[no-untyped-call]

    def request(self, method: str, path: str, body: Any = None,
                content_type: str = "application/json") -> Any:
        """One call; returns the decoded JSON body or None for 404.

        Raises:
            ClusterUnreachable: connection failure, 401 or 403.
            CliError: any other error status.
        """
        try:
            method_, url, headers, body_, _ = self.api.param_serialize(
                method=method, resource_path=path, body=body, auth_settings=["BearerToken"],
                header_params={"Accept": "application/json", "Content-Type": content_type})
            resp = self.api.call_api(method_, url, header_params=headers, body=body_,
                                     _request_timeout=REQUEST_TIMEOUT)
            raw = resp.read()  # type: ignore[no-untyped-call]
            status, reason = int(resp.status), str(resp.reason or "")
        except (urllib3.exceptions.HTTPError, OSError) as err:
            raise ClusterUnreachable(
                f"cannot reach the API server at {self.host} ({type(err).__name__}): check the kubeconfig "
                "context (--kube-config/--kube-context)") from None
        except ConfigException as err:  # exec plugin failed
            raise ClusterUnreachable(f"kubeconfig credentials failed: {str(err)[:200]}") from None
        if status == 404:
            return None
        if status in (401, 403):
            raise ClusterUnreachable(
                f"the API server at {self.host} refused {method} {path} ({status} {reason}): "
                "use a kubeconfig context with cluster-admin rights")
        if status >= 300:
            raise CliError(f"the API server at {self.host} answered {status} ({reason}) to {method} {path}")
        try:
            return json.loads(raw) if raw else {}
        except ValueError:
            raise CliError(f"the API server at {self.host} answered {method} {path} with non-JSON") from None

    def get(self, obj: dict[str, Any]) -> dict[str, Any] | None:
        """The live object named like ``obj``, or None."""
        live = self.request("GET", object_path(obj))
        return dict(live) if live else None

    def apply(self, obj: dict[str, Any]) -> Outcome:
        """Create ``obj``, or merge-patch it when the live one differs."""
        live = self.get(obj)
        if live is None:
            self.request("POST", object_path(obj, collection=True), obj)
            return "created"
        if is_subset(obj, live):
            return "unchanged"
        self.request("PATCH", object_path(obj), obj, content_type="application/merge-patch+json")
        return "updated"

    def restart(self, deployment: dict[str, Any]) -> None:
        """Roll the Deployment's pods as ``kubectl rollout restart`` does: mounted
        ConfigMap/Secret changes reach a running agent only on its next start."""
        now = dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
        patch = {"spec": {"template": {"metadata": {"annotations": {
            "kubectl.kubernetes.io/restartedAt": now}}}}}
        self.request("PATCH", object_path(deployment), patch, content_type="application/merge-patch+json")

    def delete(self, obj: dict[str, Any]) -> Outcome:
        """Delete the object named like ``obj`` (background propagation)."""
        body = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"}
        found = self.request("DELETE", object_path(obj), body)
        return "deleted" if found is not None else "absent"
