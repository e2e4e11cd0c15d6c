"""The Applications argocd/applicationset.yaml generates, rendered the way Argo CD does.

Argo CD's ApplicationSet controller (goTemplate mode) renders each string of
the template with Go's text/template and Sprig's functions, the parameters of
one generator combination as the data, and ``missingkey=error``; a cluster
generator's ``values`` are rendered first, with the cluster's parameters
(``name``, ``nameNormalized``, ``server``, ``metadata``), into ``values.<key>``;
``templatePatch`` is rendered as a whole and merged onto the result.

There is no Argo CD here, but there is Go's text/template with Sprig: Helm's
``tpl``. ``render_applications`` hands every template string and parameter set
to ``helm template`` (a throwaway chart whose only template calls ``tpl``), and
``helm lint --strict`` over the same chart refuses a missing key as Argo CD's
``missingkey=error`` does. ``name_normalized`` is Argo CD's SanitizeName
(applicationset/utils): lower case, anything but ``[-a-z0-9.]`` to ``-``, at
most 253 characters, ``-`` and ``.`` trimmed from both ends.
"""

from __future__ import annotations

import copy
import json
import re
import tempfile
from pathlib import Path
from typing import Any

import yaml

from tests.chart.conftest import run_helm
from tests.helpers import ROOT

APPSET = ROOT / "argocd" / "applicationset.yaml"
#: The throwaway chart's template: every (parameters, string) pair through `tpl`.
_RENDERER = """\
{{- $out := list }}
{{- range $job := .Values.jobs }}
{{- $out = append $out (tpl $job.text $job.params) }}
{{- end }}
apiVersion: v1
kind: ConfigMap
metadata: {name: rendered}
data:
  out: {{ $out | toJson | quote }}
"""


def name_normalized(name: str) -> str:
    """Argo CD's SanitizeName, the cluster generator's ``nameNormalized``."""
    out = re.sub(r"[^-a-z0-9.]", "-", name.lower())[:253]
    return out.strip("-.")


def appset() -> dict[str, Any]:
    (doc,) = [d for d in yaml.safe_load_all(APPSET.read_text()) if d]
    return dict(doc)


def render_strings(jobs: list[tuple[dict[str, Any], str]]) -> list[str]:
    """Each ``(params, text)`` rendered as Go text/template with Sprig; a missing key fails."""
    with tempfile.TemporaryDirectory() as tmp:
        chart = Path(tmp) / "render"
        (chart / "templates").mkdir(parents=True)
        (chart / "Chart.yaml").write_text("apiVersion: v2\nname: render\nversion: 0.1.0\n")
        (chart / "templates" / "rendered.yaml").write_text(_RENDERER)
        values = chart / "jobs.yaml"
        values.write_text(json.dumps({"jobs": [{"params": p, "text": t} for p, t in jobs]}))
        strict = run_helm("helm4", "lint", "--strict", str(chart), "-f", str(values))
        assert strict.returncode == 0, f"a template names a missing key: {strict.stdout}"
        proc = run_helm("helm4", "template", "x", str(chart), "-f", str(values))
        assert proc.returncode == 0, proc.stderr
    (doc,) = [d for d in yaml.safe_load_all(proc.stdout) if d]
    out: list[str] = json.loads(doc["data"]["out"])
    return out


def _strings(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[tuple[Any, ...], str]]:
    if isinstance(node, str):
        return [(path, node)]
    if isinstance(node, dict):
        return [s for k, v in node.items() for s in _strings(v, (*path, k))]
    if isinstance(node, list):
        return [s for i, v in enumerate(node) for s in _strings(v, (*path, i))]
    return []


def _set(node: Any, path: tuple[Any, ...], value: str) -> None:
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value


def _merge(base: Any, patch: Any) -> Any:
    """A strategic-merge-like overlay: maps merge, everything else is replaced."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for k, v in patch.items():
            out[k] = _merge(base.get(k), v) if k in base else v
        return out
    return patch


def parameter_sets(clusters: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The parameters of every Application, given the registered ``clusters`` (Secrets' data
    and labels) the cluster generator would select from."""
    out: list[dict[str, Any]] = []
    for generator in appset()["spec"]["generators"]:
        if "list" in generator:
            out += [dict(e) for e in generator["list"]["elements"]]
            continue
        children = generator["matrix"]["generators"]
        (cluster_gen,) = [g["clusters"] for g in children if "clusters" in g]
        (elements,) = [g["list"]["elements"] for g in children if "list" in g]
        wanted = cluster_gen["selector"]["matchLabels"]
        selected = [c for c in clusters if wanted.items() <= c.get("labels", {}).items()]
        cluster_params = [
            {
                "name": c["name"],
                "nameNormalized": name_normalized(c["name"]),
                "server": c["server"],
                "metadata": {"labels": c.get("labels", {})},
            }
            for c in selected
        ]
        values = cluster_gen.get("values", {})
        jobs = [(p, v) for p in cluster_params for v in values.values()]
        rendered = iter(render_strings(jobs))
        for p in cluster_params:
            p["values"] = {k: next(rendered) for k in values}
        out += [{**p, **e} for p in cluster_params for e in elements]
    return out


def render_applications(clusters: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every Application the ApplicationSet generates for ``clusters``, rendered."""
    spec = appset()["spec"]
    params = parameter_sets(clusters)
    strings = _strings(spec["template"])
    patch_text = spec.get("templatePatch", "")
    # Per Application: each string of the template, then the patch.
    jobs = [(p, s) for p in params for s in [*(s for _, s in strings), patch_text]]
    rendered = iter(render_strings(jobs))
    apps = []
    for _ in params:
        app = copy.deepcopy(spec["template"])
        for path, _text in strings:
            _set(app, path, next(rendered))
        patch = yaml.safe_load(next(rendered)) or {}
        apps.append(_merge(app, patch))
    return apps
