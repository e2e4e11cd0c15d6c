{{- define "ttg.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "ttg.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "ttg.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- /*
Labels on every object. part-of + ttg.io/release admit a pod through the
broker's NetworkPolicy, and the monitors select on ttg.io/release too: Argo CD's
label tracking rewrites app.kubernetes.io/instance on the objects it manages
(to the Application's name), never ttg.io/release.
*/ -}}
{{- define "ttg.commonLabels" -}}
helm.sh/chart: {{ include "ttg.chart" . }}
app.kubernetes.io/part-of: ttg
app.kubernetes.io/managed-by: {{ .Release.Service }}
ttg.io/release: {{ .Release.Name }}
{{- end }}

{{- /* The pods this release's broker admits (see ttg.commonLabels). */ -}}
{{- define "ttg.brokerClients" -}}
app.kubernetes.io/part-of: ttg
ttg.io/release: {{ .Release.Name }}
{{- end }}

{{- define "ttg.labels" -}}
{{ include "ttg.commonLabels" . }}
{{ include "ttg.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}

{{- /* Never the chart version: selectors are immutable. */ -}}
{{- define "ttg.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ttg.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "ttg.workerSelectorLabels" -}}
{{ include "ttg.selectorLabels" . }}
app.kubernetes.io/component: worker
{{- end }}

{{- /* What the ServiceMonitor / PodMonitor scrape: workers and the exporter. */ -}}
{{- define "ttg.metricsSelector" -}}
matchLabels:
  app.kubernetes.io/name: {{ include "ttg.name" . }}
  ttg.io/release: {{ .Release.Name }}
matchExpressions:
  - key: app.kubernetes.io/component
    operator: In
    values: [worker, exporter]
{{- end }}

{{- /*
The Prometheus label that carries ttg.io/release on every scraped series: the
monitors copy it from the pod (relabelings), so alerts, the dashboard and KEDA
tell two releases in one namespace apart, whatever Argo CD does to
app.kubernetes.io/instance.
*/ -}}
{{- define "ttg.releaseLabel" -}}
ttg_release
{{- end }}

{{- /* The monitors' relabeling that adds it. */ -}}
{{- define "ttg.releaseRelabeling" -}}
- sourceLabels: [__meta_kubernetes_pod_label_ttg_io_release]
  targetLabel: {{ include "ttg.releaseLabel" . }}
{{- end }}

{{- /* PromQL matchers for this release's series: namespace="…", ttg_release="…". */ -}}
{{- define "ttg.promSelector" -}}
namespace="{{ .Release.Namespace }}", {{ include "ttg.releaseLabel" . }}="{{ .Release.Name }}"
{{- end }}

{{- define "ttg.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "ttg.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- /* The worker image; by digest too when image.digest is set (a released chart pins it). */ -}}
{{- define "ttg.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- with .Values.image.digest }}@{{ . }}{{ end }}
{{- end }}

{{- /*
ttg.componentName (list . "worker"): "<fullname>-worker", a valid DNS label
(at most 63 characters) whatever the release name. The base is cut before the
suffix is added, so names stay distinct and keep their suffix.
*/ -}}
{{- define "ttg.componentName" -}}
{{- $suffix := index . 1 }}
{{- $base := include "ttg.fullname" (index . 0) | trunc (int (sub 62 (len $suffix))) | trimSuffix "-" }}
{{- printf "%s-%s" $base $suffix }}
{{- end }}

{{- /*
ttg.brokerFullname (list . "redis"): name of the broker's objects (StatefulSet,
Services, Secret). At most 52 characters: the StatefulSet controller labels
its pods with "<name>-<revision hash>", which must stay a 63-character label,
and "<name>-headless" / "<name>-config" fit in 63 too.
*/ -}}
{{- define "ttg.brokerFullname" -}}
{{- $kind := index . 1 }}
{{- $base := include "ttg.fullname" (index . 0) | trunc (int (sub 51 (len $kind))) | trimSuffix "-" }}
{{- printf "%s-%s" $base $kind }}
{{- end }}

{{- /* Which client library the worker uses: the backend, or the external broker's kind. */ -}}
{{- define "ttg.brokerKind" -}}
{{- if eq .Values.backend "external" }}{{ .Values.external.kind }}{{ else }}{{ .Values.backend }}{{ end }}
{{- end }}

{{- /*
ttg.brokerEnv: the broker endpoint for whichever backend is active, as the
TTG_* variables of the worker contract. The URL carries no credentials; they
come from the broker's Secret (TTG_BROKER_USERNAME / TTG_BROKER_PASSWORD).
With `external`, the whole URL comes from the user's Secret.
*/ -}}
{{- define "ttg.brokerEnv" -}}
- name: TTG_BACKEND
  value: {{ include "ttg.brokerKind" . | quote }}
{{- if eq .Values.backend "redis" }}
{{- $name := include "ttg.brokerFullname" (list . "redis") }}
- name: TTG_BROKER_URL
  value: {{ include "ttg-redis.clientUrl" (dict "Values" .Values.redis "fullname" $name) | quote }}
{{- if .Values.redis.auth.enabled }}
- name: TTG_BROKER_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .Values.redis.auth.existingSecret | default $name }}
      key: {{ .Values.redis.auth.secretKey }}
{{- end }}
{{- else if eq .Values.backend "rabbitmq" }}
{{- $name := include "ttg.brokerFullname" (list . "rabbitmq") }}
{{- $secret := .Values.rabbitmq.auth.existingSecret | default $name }}
- name: TTG_BROKER_URL
  value: {{ include "ttg-rabbitmq.clientUrl" (dict "Values" .Values.rabbitmq "fullname" $name) | quote }}
- name: TTG_BROKER_USERNAME
  valueFrom:
    secretKeyRef: {name: {{ $secret }}, key: username}
- name: TTG_BROKER_PASSWORD
  valueFrom:
    secretKeyRef: {name: {{ $secret }}, key: password}
{{- if gt (int .Values.rabbitmq.replicas) 1 }}
# Declare nothing until every node runs in one cluster, so that a run's quorum
# queues and streams get a member on each (docs/contract.md).
- name: TTG_RABBITMQ_EXPECT_NODES
  value: {{ int .Values.rabbitmq.replicas | quote }}
{{- end }}
{{- else }}
- name: TTG_BROKER_URL
  valueFrom:
    secretKeyRef:
      name: {{ required "external.existingSecret is required when backend=external" .Values.external.existingSecret }}
      key: {{ .Values.external.urlKey }}
{{- end }}
{{- with include "ttg.brokerTLS" . | fromYaml }}
{{- if .caSecret }}
# The broker's certificate is verified against this CA (and names the host in the URL).
- name: TTG_BROKER_CA_FILE
  value: /etc/ttg/broker-ca/ca.crt
{{- end }}
{{- if .clientSecret }}
- name: TTG_BROKER_CERT_FILE
  value: /etc/ttg/broker-client/tls.crt
- name: TTG_BROKER_KEY_FILE
  value: /etc/ttg/broker-client/tls.key
{{- end }}
{{- end }}
{{- end }}

{{- /*
ttg.brokerTLS: the TLS files TTG's pods get, as YAML, empty when there are none:
  caSecret      Secret whose ca.crt TTG's pods trust (for a bundled broker its
                own Secret: only that key is mounted, never its private key)
  clientSecret  Secret with their client certificate (tls.clientAuth)
The subcharts name the Secrets of a bundled broker (ttg-redis.tlsSecretName,
...); for an external broker they are external.tls.caSecret / clientSecret.
*/ -}}
{{- define "ttg.brokerTLS" -}}
{{- if eq .Values.backend "external" }}
{{- with .Values.external.tls }}
{{- if .caSecret }}
caSecret: {{ .caSecret }}
{{- end }}
{{- if .clientSecret }}
clientSecret: {{ .clientSecret }}
{{- end }}
{{- end }}
{{- else if has .Values.backend (list "redis" "rabbitmq") }}
{{- $kind := .Values.backend }}
{{- $values := index .Values $kind }}
{{- if $values.tls.enabled }}
{{- $ctx := dict "Values" $values "fullname" (include "ttg.brokerFullname" (list . $kind)) }}
caSecret: {{ include (printf "ttg-%s.tlsSecretName" $kind) $ctx }}
{{- if $values.tls.clientAuth.enabled }}
clientSecret: {{ include (printf "ttg-%s.tlsClientSecretName" $kind) $ctx }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{- /* Volumes for ttg.brokerEnv's TLS files (nothing without TLS). */ -}}
{{- define "ttg.brokerVolumes" -}}
{{- with include "ttg.brokerTLS" . | fromYaml }}
{{- if .caSecret }}
- name: broker-ca
  secret:
    secretName: {{ .caSecret }}
    items: [{key: ca.crt, path: ca.crt}]
{{- end }}
{{- if .clientSecret }}
# Readable by the pod's group (fsGroup) only.
- name: broker-client
  secret:
    secretName: {{ .clientSecret }}
    defaultMode: 0440
    items: [{key: tls.crt, path: tls.crt}, {key: tls.key, path: tls.key}]
{{- end }}
{{- end }}
{{- end }}

{{- define "ttg.brokerVolumeMounts" -}}
{{- with include "ttg.brokerTLS" . | fromYaml }}
{{- if .caSecret }}
- {name: broker-ca, mountPath: /etc/ttg/broker-ca, readOnly: true}
{{- end }}
{{- if .clientSecret }}
- {name: broker-client, mountPath: /etc/ttg/broker-client, readOnly: true}
{{- end }}
{{- end }}
{{- end }}

{{- /*
What every TTG pod (workers, exporter, seeding Job, test pod) adds to its own:
the broker's TLS files, then the operator's extraVolumes / extraVolumeMounts /
extraEnv (an external broker's private CA, a proxy, a compute's settings).
ttg.volumes and ttg.volumeMounts are empty when there is nothing to add.
*/ -}}
{{- define "ttg.volumes" -}}
{{- $extra := "" }}
{{- with .Values.extraVolumes }}{{ $extra = toYaml . }}{{ end }}
{{- printf "%s\n%s\n%s" (include "ttg.brokerVolumes" .) (include "ttg.resultsVolumes" .) $extra | trim }}
{{- end }}

{{- define "ttg.volumeMounts" -}}
{{- $extra := "" }}
{{- with .Values.extraVolumeMounts }}{{ $extra = toYaml . }}{{ end }}
{{- printf "%s\n%s\n%s" (include "ttg.brokerVolumeMounts" .) (include "ttg.resultsVolumeMounts" .) $extra | trim }}
{{- end }}

{{- define "ttg.extraEnv" -}}
{{- with .Values.extraEnv }}
{{- toYaml . }}
{{- end }}
{{- end }}

{{- /* Pod and container security: the restricted Pod Security Standard. */ -}}
{{- define "ttg.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "ttg.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
{{- end }}

{{- /*
ttg.computeAllow: TTG_COMPUTE_ALLOW, the computes a run may name: exactly the
built-in ttg.compute:square, the operator's computeAllow entries (module
prefixes, module:function, exec:PROGRAM), and exactly run.compute when set
(its function, not its whole module: so the chart's own run always passes and
nothing else of that module does).
*/ -}}
{{- define "ttg.computeAllow" -}}
{{- $allow := list "ttg.compute:square" }}
{{- range .Values.computeAllow }}
{{- $allow = append $allow . }}
{{- end }}
{{- with .Values.run.compute }}
{{- $allow = append $allow . }}
{{- end }}
{{- $allow | uniq | join "," }}
{{- end }}

{{- define "ttg.seedArgs" -}}
- seed
- --run
- {{ .Values.run.id | quote }}
{{- if .Values.run.space }}
- --space
- {{ .Values.run.space | quote }}
{{- else }}
- --params
- {{ .Values.run.params | quote }}
{{- end }}
- --chunk-size
- {{ .Values.run.chunkSize | quote }}
- --work-ms
- {{ .Values.run.workMs | quote }}
- --max-deliveries
- {{ .Values.run.maxDeliveries | quote }}
{{- if .Values.run.compute }}
- --compute
- {{ .Values.run.compute | quote }}
{{- end }}
{{- if gt (float64 (.Values.run.paramTimeout | default 0)) 0.0 }}
- --param-timeout
- {{ .Values.run.paramTimeout | quote }}
{{- end }}
{{- if .Values.run.paramMemory }}
- --param-memory
- {{ .Values.run.paramMemory | quote }}
{{- end }}
{{- end }}
