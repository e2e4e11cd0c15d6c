"""Run a rendered pod's containers as local processes, doing what the kubelet would.

The chart tests that start real brokers and workers go through here, so that
what runs is the chart's own command, args, env and config files, never a copy
of them in a test. The kubelet's part is done for real where one machine can:

- env: ``value``; ``valueFrom`` with ``secretKeyRef`` / ``configMapKeyRef``
  resolved from the rendered Secrets and ConfigMaps (``optional`` honoured) and
  ``fieldRef`` to the pod's name and namespace; ``envFrom`` ConfigMaps and
  Secrets; ``$(VAR)`` references expanded in env, command and args. Secrets the
  chart does not render (an ``existingSecret``, one cert-manager writes) are the
  caller's, given as ``cluster_secrets``: what the cluster would hold;
- volumes: ConfigMap, Secret and projected (of those) volumes become directories of files, emptyDir
  and PersistentVolumeClaims become directories. A claim's directory is the
  caller's, so it outlives the pod, as a PVC does;
- init containers run to completion, in order, before a container starts.

What cannot exist outside a pod is substituted, and only that: every mountPath
(and every image directory the caller names) is rewritten to its local
directory wherever it appears in command, args, env values and mounted files;
the literal replacements the caller lists (a Service host:port, a listener
line, a node name) are applied the same way. Binaries come from PATH.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import signal
import subprocess
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from tests.chart.conftest import Rendered

_VAR_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


class Pod:
    """One rendered pod spec, run locally.

    Args:
        rendered: the manifests the pod was rendered with (for its Secrets and ConfigMaps).
        spec: the pod spec (a template's ``spec`` or a bare Pod's).
        workdir: where this pod's volumes live (a fresh directory per pod).
        name: the pod name (``fieldRef: metadata.name``).
        namespace: the pod's namespace (``fieldRef: metadata.namespace``).
        cluster_secrets: Secrets the cluster holds that the chart does not render
            (name -> key -> value).
        claims: claim name -> local directory, for volumes that outlive the pod.
        image_env: the environment the image sets (its ``ENV`` lines and defaults).
        image_dirs: image directories a container writes to -> local directory.
        entrypoint: the image's ENTRYPOINT, used when a container has no ``command``.
        replace: literal (pod text, local text) replacements.
        env_overrides: variables set last (e.g. a port the pod would own alone).
        path_prefix: directories put in front of PATH (where the image's binaries are here).
    """

    def __init__(
        self,
        rendered: Rendered,
        spec: dict[str, Any],
        workdir: Path,
        *,
        name: str = "pod-0",
        namespace: str = "sweeps",
        cluster_secrets: Mapping[str, Mapping[str, str]] | None = None,
        claims: Mapping[str, Path] | None = None,
        image_env: Mapping[str, str] | None = None,
        image_dirs: Mapping[str, Path] | None = None,
        entrypoint: Sequence[str] = (),
        replace: Sequence[tuple[str, str]] = (),
        env_overrides: Mapping[str, str] | None = None,
        path_prefix: Sequence[str] = (),
    ) -> None:
        self.rendered = rendered
        self.spec = spec
        self.workdir = workdir
        self.name = name
        self.namespace = namespace
        self.cluster_secrets = {k: dict(v) for k, v in (cluster_secrets or {}).items()}
        self.claims = dict(claims or {})
        self.image_env = dict(image_env or {})
        self.entrypoint = list(entrypoint)
        self.replace = list(replace)
        self.env_overrides = dict(env_overrides or {})
        self.path_prefix = list(path_prefix)
        self.procs: list[subprocess.Popen[bytes]] = []
        self._logs: list[IO[bytes]] = []
        self.image_dirs = dict(image_dirs or {})
        for d in self.image_dirs.values():
            d.mkdir(parents=True, exist_ok=True)
        self.volumes: dict[str, Path] = {}
        self._make_volumes()

    # -- what the kubelet sets up -------------------------------------------------

    def secret(self, name: str) -> dict[str, str]:
        doc = self._doc("Secret", name)
        if doc is None:
            return dict(self.cluster_secrets.get(name, {}))
        out = {k: base64.b64decode(v).decode() for k, v in (doc.get("data") or {}).items()}
        out.update(doc.get("stringData") or {})
        return out

    def config_map(self, name: str) -> dict[str, str]:
        doc = self._doc("ConfigMap", name)
        return dict((doc or {}).get("data") or {})

    def container(self, name: str) -> dict[str, Any]:
        for c in self.spec.get("initContainers", []) + self.spec["containers"]:
            if c["name"] == name:
                return dict(c)
        raise KeyError(f"no container {name} in {[c['name'] for c in self.spec['containers']]}")

    def env(self, container: str) -> dict[str, str]:
        """The container's environment, as its process would see it (localised)."""
        c = self.container(container)
        env: dict[str, str] = {
            "PATH": os.pathsep.join([*self.path_prefix, os.environ.get("PATH", "")]),
            **self.image_env,
        }
        for source in c.get("envFrom") or []:
            prefix = source.get("prefix", "")
            if "configMapRef" in source:
                data = self._required(
                    "ConfigMap",
                    source["configMapRef"],
                    self.config_map(source["configMapRef"]["name"]),
                )
            else:
                data = self._required(
                    "Secret", source["secretRef"], self.secret(source["secretRef"]["name"])
                )
            env.update({prefix + k: v for k, v in data.items()})
        for e in c.get("env") or []:
            value = self._env_value(e, env)
            if value is not None:
                env[e["name"]] = value
        env = {k: self.localize(v) for k, v in env.items()}
        env.update(self.env_overrides)
        return env

    def argv(self, container: str) -> list[str]:
        c = self.container(container)
        env = self.env(container)
        pod_words = [*(c.get("command") or []), *(c.get("args") or [])]
        # The image's entrypoint stands for this machine's program already: its path is
        # not a pod path to localize (a checkout under /tmp is not the pod's emptyDir).
        entrypoint = [] if c.get("command") else self.entrypoint
        words = [*entrypoint, *(self.localize(_expand(w, env)) for w in pod_words)]
        assert words, f"container {container}: no command, args or image entrypoint"
        return words

    def localize(self, text: str) -> str:
        """Rewrite pod paths to local directories, then apply the literal replacements."""
        paths = self._path_map()
        if paths:
            # One pass, longest path first: a local directory (itself under /tmp)
            # must never be rewritten again by a shorter pod path such as /tmp.
            alternatives = "|".join(re.escape(p) for p in sorted(paths, key=len, reverse=True))
            pattern = re.compile(rf"(?<![\w./-])(?:{alternatives})(?![\w.-])")
            text = pattern.sub(lambda m: str(paths[m[0]]), text)
        for old, new in self.replace:
            text = text.replace(old, new)
        return text

    # -- running containers -------------------------------------------------------

    def run(self, container: str, *, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run a container to completion (an init container, a Job's, a test pod's)."""
        return subprocess.run(
            self.argv(container),
            env=self.env(container),
            cwd=self.workdir,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def run_init_containers(self, *, timeout: float = 120) -> None:
        for c in self.spec.get("initContainers", []):
            proc = self.run(c["name"], timeout=timeout)
            assert proc.returncode == 0, (
                f"init container {c['name']} exited {proc.returncode}: {proc.stdout}{proc.stderr}"
            )

    def start(self, container: str) -> subprocess.Popen[bytes]:
        """Start a long-running container; its output goes to <workdir>/<container>.log."""
        log = open(self.workdir / f"{container}.log", "ab")  # noqa: SIM115 - closed in stop()
        self._logs.append(log)
        proc = subprocess.Popen(
            self.argv(container),
            env=self.env(container),
            cwd=self.workdir,  # where a crash dump lands, say
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs.append(proc)
        return proc

    def log(self, container: str) -> str:
        path = self.workdir / f"{container}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def exec_probe(self, container: str, kind: str) -> subprocess.CompletedProcess[str]:
        """Run a container's ``exec`` probe command with the container's environment."""
        probe = self.container(container)[kind]
        return subprocess.run(
            [self.localize(w) for w in probe["exec"]["command"]],
            env=self.env(container),
            cwd=self.workdir,
            capture_output=True,
            text=True,
            timeout=probe.get("timeoutSeconds", 1) + 60,
            check=False,
        )

    def http_probe(self, container: str, kind: str, port: int) -> int:
        """GET a container's ``httpGet`` probe path on ``port`` (the local port); the status."""
        probe = self.container(container)[kind]
        url = f"http://127.0.0.1:{port}{probe['httpGet']['path']}"
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as e:
            return int(e.code)
        except OSError:
            return 0

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> list[int]:
        """Signal every started container's process group; wait, then SIGKILL stragglers."""
        for p in self.procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, sig)
        codes = []
        for p in self.procs:
            try:
                codes.append(p.wait(timeout=timeout))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                codes.append(p.wait())
        for log in self._logs:
            log.close()
        self.procs.clear()
        self._logs.clear()
        return codes

    # -- internals ----------------------------------------------------------------

    def _doc(self, kind: str, name: str) -> dict[str, Any] | None:
        found = [
            d for d in self.rendered.docs if d["kind"] == kind and d["metadata"]["name"] == name
        ]
        return found[0] if found else None

    @staticmethod
    def _required(kind: str, ref: dict[str, Any], data: dict[str, str]) -> dict[str, str]:
        assert data or ref.get("optional"), f"{kind} {ref['name']} is not rendered by the chart"
        return data

    def _env_value(self, e: dict[str, Any], env: Mapping[str, str]) -> str | None:
        if "value" in e:
            return _expand(str(e["value"]), env)
        source = e.get("valueFrom", {})
        if "secretKeyRef" in source or "configMapKeyRef" in source:
            kind = "Secret" if "secretKeyRef" in source else "ConfigMap"
            ref = source["secretKeyRef" if kind == "Secret" else "configMapKeyRef"]
            data = self.secret(ref["name"]) if kind == "Secret" else self.config_map(ref["name"])
            if ref["key"] in data:
                return data[ref["key"]]
            # The kubelet refuses to start a container whose required key is missing.
            assert ref.get("optional"), f"{e['name']}: {kind} {ref['name']} has no key {ref['key']}"
            return None
        if "fieldRef" in source:
            fields = {"metadata.name": self.name, "metadata.namespace": self.namespace}
            assert source["fieldRef"]["fieldPath"] in fields, source
            return fields[source["fieldRef"]["fieldPath"]]
        if "valueFrom" not in e:
            return ""  # a name alone: the empty string
        raise AssertionError(f"unsupported env source in {e}")

    def _make_volumes(self) -> None:
        out = self.volumes
        for v in self.spec.get("volumes", []):
            name = v["name"]
            if "persistentVolumeClaim" in v:
                claim = v["persistentVolumeClaim"]["claimName"]
                out[name] = self.claims.get(claim) or self.workdir / f"pvc-{claim}"
            elif "configMap" in v or "secret" in v or "projected" in v:
                out[name] = self.workdir / f"vol-{name}"
            else:
                assert "emptyDir" in v, f"unsupported volume {v}"
                out[name] = self.workdir / f"emptydir-{name}"
            out[name].mkdir(parents=True, exist_ok=True)
        # volumeClaimTemplates of a StatefulSet: mounted by name, kept by the caller.
        for name, path in self.claims.items():
            out.setdefault(name, path)
            path.mkdir(parents=True, exist_ok=True)
        for v in self.spec.get("volumes", []):
            if "configMap" in v:
                data = self.config_map(v["configMap"]["name"])
                self._write_files(out[v["name"]], data, v["configMap"].get("items"))
            elif "secret" in v:
                data = self.secret(v["secret"]["secretName"])
                self._required("Secret", {"name": v["secret"]["secretName"], **v["secret"]}, data)
                self._write_files(out[v["name"]], data, v["secret"].get("items"))
            elif "projected" in v:
                # Its sources' files, side by side in one directory.
                for source in v["projected"]["sources"]:
                    if "secret" in source:
                        ref = source["secret"]
                        data = self._required("Secret", ref, self.secret(ref["name"]))
                    else:
                        ref = source["configMap"]
                        data = self._required("ConfigMap", ref, self.config_map(ref["name"]))
                    self._write_files(out[v["name"]], data, ref.get("items"))

    def _write_files(
        self, into: Path, data: dict[str, str], items: list[dict[str, str]] | None
    ) -> None:
        missing = [i["key"] for i in items or [] if i["key"] not in data]
        assert not missing, f"the kubelet would not mount keys {missing} it cannot find"
        files = {i["path"]: data[i["key"]] for i in items} if items else data
        for rel, content in files.items():
            (into / rel).parent.mkdir(parents=True, exist_ok=True)
            (into / rel).write_text(self.localize(content))

    def _path_map(self) -> dict[str, Path]:
        paths: dict[str, Path] = dict(self.image_dirs)
        for c in self.spec.get("initContainers", []) + self.spec["containers"]:
            for m in c.get("volumeMounts", []):
                local = self.volumes[m["name"]]
                if m.get("subPath"):
                    local = local / m["subPath"]
                known = paths.get(m["mountPath"])
                assert known in (None, local), (
                    f"{m['mountPath']} is mounted from different volumes in one pod"
                )
                paths[m["mountPath"]] = local
        return paths


def _expand(text: str, env: Mapping[str, str]) -> str:
    """The kubelet's $(VAR) expansion (an unknown reference is left as it is)."""
    return _VAR_REF.sub(lambda m: env.get(m[1], m[0]), text)


def add_group_bits(root: Path) -> None:
    """What the kubelet does to a volume for a pod's fsGroup: group read/write on everything.

    (Directories also get the setgid bit and group execute; files group read
    and write, on every mount unless fsGroupChangePolicy is OnRootMismatch and
    the volume's root already matches.)
    """
    for path in [root, *root.rglob("*")]:
        if path.is_symlink():
            continue
        mode = path.stat().st_mode
        extra = 0o2070 if path.is_dir() else 0o060
        path.chmod((mode | extra) & 0o7777)
