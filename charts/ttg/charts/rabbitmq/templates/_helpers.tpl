{{- /*
Every object of this chart is a named template in the file named after its
kind (statefulset.yaml defines ttg-rabbitmq.statefulset, ...), rendered from
the same context dict as the redis subchart's (Values, Release, Capabilities,
fullname, labels, clients, imagePullSecrets; see its _helpers.tpl): named
templates so that the parent's one `backend` value decides whether they render
(ttg-rabbitmq.manifests, from its templates/broker.yaml). Installed alone
(standalone: true), each file renders its own object (ttg-rabbitmq.standalone).
*/ -}}
{{- define "ttg-rabbitmq.selectorLabels" -}}
app.kubernetes.io/name: rabbitmq
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: broker
{{- end }}

{{- define "ttg-rabbitmq.labels" -}}
{{ include "ttg-rabbitmq.selectorLabels" . }}
{{ toYaml .labels }}
app.kubernetes.io/version: {{ .Values.image.tag | quote }}
{{- end }}

{{- define "ttg-rabbitmq.secretName" -}}
{{- .Values.auth.existingSecret | default .fullname -}}
{{- end }}

{{- /* "true" when the nodes form a cluster (replicas > 1), else empty. */ -}}
{{- define "ttg-rabbitmq.clustered" -}}
{{- if gt (int .Values.replicas) 1 }}true{{ end }}
{{- end }}

{{- /*
ttg-rabbitmq.hosts: the addresses TTG's pods connect to, one per line. A
single node: the Service. A cluster: every node by its stable name under the
headless Service (<pod>.<headless>), so a client whose node dies fails over
to the next address rather than waiting for the Service to drop the endpoint.
*/ -}}
{{- define "ttg-rabbitmq.hosts" -}}
{{- if include "ttg-rabbitmq.clustered" . }}
{{- range $i := until (int .Values.replicas) }}
{{ printf "%s-%d.%s-headless" $.fullname $i $.fullname }}
{{- end }}
{{- else }}
{{ .fullname }}
{{- end }}
{{- end }}

{{- /*
ttg-rabbitmq.unchangeable (list . $existing): fails when the StatefulSet about
to be rendered differs from $existing, the one installed (a `lookup`; empty
under `helm template` and Argo CD, which then meet the API server's error),
in a field Kubernetes does not let an upgrade change: the pod management
policy (1 node: OrderedReady; a cluster: Parallel) and the volume claim
template (persistence on or off, its size and class). The message names the
way through, from the chart README.
*/ -}}
{{- define "ttg-rabbitmq.unchangeable" -}}
{{- $ := index . 0 }}
{{- $existing := index . 1 | default dict }}
{{- with $existing.spec }}
{{- $name := $.fullname }}
{{- $was := .replicas | default 1 | int }}
{{- $now := int $.Values.replicas }}
{{- $policyWas := .podManagementPolicy | default "OrderedReady" }}
{{- $policyNow := ternary "Parallel" "OrderedReady" (gt $now 1) }}
{{- if ne $policyWas $policyNow }}
{{- fail (printf "rabbitmq.replicas=%d: StatefulSet %s runs %d node(s) with podManagementPolicy %s, and Kubernetes does not let an upgrade change it to %s (nor can a single node become a cluster in place: its node name differs). Export what you need (ttg results), helm uninstall, delete the broker's PersistentVolumeClaims (kubectl delete pvc -l app.kubernetes.io/name=rabbitmq,app.kubernetes.io/instance=%s), then install with rabbitmq.replicas=%d: see 'Changing the size' in the chart README." $now $name $was $policyWas $policyNow $.Release.Name $now) }}
{{- end }}
{{- $claims := .volumeClaimTemplates | default list }}
{{- if ne (len $claims | int) (ternary 1 0 $.Values.persistence.enabled | int) }}
{{- fail (printf "rabbitmq.persistence.enabled=%t: StatefulSet %s was installed with persistence %s, and Kubernetes does not let an upgrade change its volume claims. Export what you need, helm uninstall (and delete the broker's PersistentVolumeClaims), then install with the new setting: see 'Changing the size' in the chart README." $.Values.persistence.enabled $name (ternary "on" "off" (gt (len $claims) 0))) }}
{{- end }}
{{- range $claims }}
{{- $size := .spec.resources.requests.storage | default "" | toString }}
{{- $class := .spec.storageClassName | default "" }}
{{- if or (ne $size (toString $.Values.persistence.size)) (ne $class $.Values.persistence.storageClass) }}
{{- fail (printf "rabbitmq.persistence: StatefulSet %s's volumes were claimed with size %s and class %q; Kubernetes does not let an upgrade change a StatefulSet's volume claims. Keep rabbitmq.persistence.size=%s (grow a volume by editing each PersistentVolumeClaim, where its StorageClass allows expansion), or reinstall: see 'Changing the size' in the chart README." $name $size $class $size) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{- /* The AMQP port: 5671 (amqps) with TLS, which is then the only one; else 5672. */ -}}
{{- define "ttg-rabbitmq.amqpPort" -}}
{{- ternary 5671 5672 .Values.tls.enabled }}
{{- end }}

{{- /* The AMQP port's name: amqps with TLS, else amqp. */ -}}
{{- define "ttg-rabbitmq.amqpName" -}}
{{- ternary "amqps" "amqp" .Values.tls.enabled }}
{{- end }}

{{- /* The management UI's port: 15671 (HTTPS) with TLS, else 15672. */ -}}
{{- define "ttg-rabbitmq.managementPort" -}}
{{- ternary 15671 15672 .Values.tls.enabled }}
{{- end }}

{{- /* ttg-rabbitmq.clientUrl: TTG_BROKER_URL, comma-separated for a cluster (credentials come from the Secret). */ -}}
{{- define "ttg-rabbitmq.clientUrl" -}}
{{- $scheme := ternary "amqps" "amqp" .Values.tls.enabled }}
{{- $port := include "ttg-rabbitmq.amqpPort" . }}
{{- $urls := list }}
{{- range splitList "\n" (include "ttg-rabbitmq.hosts" . | trim) }}
{{- $urls = append $urls (printf "%s://%s:%s/%%2F" $scheme . $port) }}
{{- end }}
{{- join "," $urls }}
{{- end }}

{{- define "ttg-rabbitmq.plugins" -}}
{{- $plugins := list "rabbitmq_prometheus" }}
{{- if include "ttg-rabbitmq.clustered" . }}{{ $plugins = append $plugins "rabbitmq_peer_discovery_k8s" }}{{ end }}
{{- if .Values.managementUI.enabled }}{{ $plugins = append $plugins "rabbitmq_management" }}{{ end }}
{{- printf "[%s]." (join "," $plugins) }}
{{- end }}

{{- /*
ttg-rabbitmq.manifests: every object, in the order the parent has always
rendered them (Helm sorts them by kind; objects of one kind keep this order).
Each starts a new line: the object templates begin with `---`.
*/ -}}
{{- define "ttg-rabbitmq.manifests" -}}
{{- $kinds := list "certificate" "secret" "configmap" "service" "statefulset"
      "poddisruptionbudget" "networkpolicy" }}
{{- range $kinds }}
{{ include (printf "ttg-rabbitmq.%s" .) $ }}
{{- end }}
{{- end }}

{{- /*
ttg-rabbitmq.standalone (list . "statefulset"): renders that object when this
chart is installed on its own, with the context the ttg chart would give it.
*/ -}}
{{- define "ttg-rabbitmq.standalone" -}}
{{- $root := index . 0 }}
{{- if $root.Values.standalone }}
{{- $ctx := dict
      "Values" $root.Values
      "Release" $root.Release
      "Capabilities" $root.Capabilities
      "fullname" (printf "%s-rabbitmq" ($root.Release.Name | trunc 43 | trimSuffix "-"))
      "labels" (dict "app.kubernetes.io/managed-by" $root.Release.Service)
      "clients" (dict "app.kubernetes.io/part-of" "ttg" "ttg.io/release" $root.Release.Name) }}
{{- include (printf "ttg-rabbitmq.%s" (index . 1)) $ctx }}
{{- end }}
{{- end }}
