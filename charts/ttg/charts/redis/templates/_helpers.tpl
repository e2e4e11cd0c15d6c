{{- /*
Every object of this chart is a named template in the file named after its
kind (statefulset.yaml defines ttg-redis.statefulset, ...), rendered from a
context dict:
  Values    this chart's values (under the ttg chart: the parent's .Values.redis,
            which Helm has already merged with this chart's defaults)
  Release   the release
  Capabilities  the cluster's (for cert-manager's API)
  fullname  object name, e.g. ttg-redis
  labels    labels every object carries
  clients   labels of the pods the NetworkPolicy admits
  imagePullSecrets  the parent chart's (optional; added to this chart's own)
Named templates, not plain ones, so that the parent can render them when its
one `backend` value says so (ttg-redis.manifests, from its templates/broker.yaml):
a subchart's own templates can only be gated by a boolean `condition:`, which
`--set backend=rabbitmq` alone cannot flip. Installed alone (standalone: true),
each file renders its own object (ttg-redis.standalone).
*/ -}}
{{- define "ttg-redis.selectorLabels" -}}
app.kubernetes.io/name: redis
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: broker
{{- end }}

{{- define "ttg-redis.labels" -}}
{{ include "ttg-redis.selectorLabels" . }}
{{ toYaml .labels }}
app.kubernetes.io/version: {{ .Values.image.tag | quote }}
{{- end }}

{{- define "ttg-redis.secretName" -}}
{{- .Values.auth.existingSecret | default .fullname -}}
{{- end }}

{{- /* ttg-redis.clientUrl: TTG_BROKER_URL (the password comes from the Secret). With
Sentinel (replicas > 1): every pod's sentinel, and the name they know the master by. */ -}}
{{- define "ttg-redis.clientUrl" -}}
{{- if include "ttg-redis.sentinel" . -}}
{{- $hosts := list }}
{{- range (include "ttg-redis.peers" . | splitList " ") }}
{{- $hosts = append $hosts (printf "%s:26379" .) }}
{{- end }}
{{- printf "redis+sentinel://%s/%s" (join "," $hosts) .Values.sentinel.masterName }}
{{- else }}
{{- printf "%s://%s:6379/0" (ternary "rediss" "redis" .Values.tls.enabled) .fullname }}
{{- end }}
{{- end }}

{{- /* ttg-redis.sentinel: non-empty when the pods run with Sentinel (replicas > 1). */ -}}
{{- define "ttg-redis.sentinel" -}}
{{- if gt (int (.Values.replicas | default 1)) 1 }}true{{ end }}
{{- end }}

{{- /* ttg-redis.peers: every pod's stable name (<pod>.<headless Service>), space-separated. */ -}}
{{- define "ttg-redis.peers" -}}
{{- $names := list }}
{{- range $i := until (int .Values.replicas) }}
{{- $names = append $names (printf "%s-%d.%s-headless" $.fullname $i $.fullname) }}
{{- end }}
{{- join " " $names }}
{{- end }}

{{- /*
ttg-redis.findMaster: shell lines that set $master to the master's name: what a
sentinel says (any pod's, this one's too: a restarted container asks its own), or
the -0 pod when none answers (the first start). An error reply is no answer.
*/ -}}
{{- define "ttg-redis.findMaster" -}}
me="$(hostname).{{ .fullname }}-headless"
master=""
for peer in {{ include "ttg-redis.peers" . }}; do
  reply=$(timeout 3 redis-cli -h "$peer" -p 26379 sentinel get-master-addr-by-name {{ .Values.sentinel.masterName }} 2>/dev/null | head -n 1) || true
  case "$reply" in *" "*|"") ;; *) master="$reply"; break ;; esac
done
[ -n "$master" ] || master="{{ .fullname }}-0.{{ .fullname }}-headless"
echo "master: $master (this pod: $me)"
{{- end }}

{{- /*
ttg-redis.probe (list . "ready"|"alive"): a probe's command. redis-cli exits 0
on an error reply (-NOAUTH, -LOADING, ...), so the reply itself is checked:
ready only on PONG; alive (startup, liveness) also while the server is loading
its data (a big AOF, a replica's first sync), which may outlast any probe
budget and must not get the pod killed. The redis-cli words stay separate
arguments ("$@") so nothing is quoted twice.
*/ -}}
{{- define "ttg-redis.probe" -}}
{{- $accept := ternary "PONG" "PONG|LOADING*" (eq (index . 1) "ready") }}
- sh
- -c
- 'reply=$("$@"); echo "$reply"; case "$reply" in {{ $accept }}) exit 0;; esac; exit 1'
- {{ index . 1 }}
{{- include "ttg-redis.cli" (index . 0) | nindent 0 }}
{{- end }}

{{- /* redis-cli as the probes run it: over TLS when the broker serves only TLS. */ -}}
{{- define "ttg-redis.cli" -}}
- redis-cli
- -p
- "6379"
{{- if .Values.tls.enabled }}
- --tls
- --cacert
- /tls/ca.crt
{{- if .Values.tls.clientAuth.enabled }}
- --cert
- /tls/tls.crt
- --key
- /tls/tls.key
{{- end }}
{{- end }}
- ping
{{- end }}

{{- /*
redis.conf: the settings TTG relies on, then the user's extraConfig lines,
which come last so that they win (Redis keeps the last value of a directive).
*/ -}}
{{- define "ttg-redis.conf" -}}
# Rendered by the TTG chart (charts/redis). The password is not here: it is
# given on the command line from the Secret.
bind * -::*
{{- if .Values.tls.enabled }}
# TLS only: no plaintext port.
port 0
tls-port 6379
tls-cert-file /tls/tls.crt
tls-key-file /tls/tls.key
tls-ca-cert-file /tls/ca.crt
# Mutual TLS: only clients with a certificate the CA in ca.crt signed.
tls-auth-clients {{ ternary "yes" "no" .Values.tls.clientAuth.enabled }}
{{- else }}
port 6379
{{- end }}
# Without a password, the NetworkPolicy is the only guard: protected mode would
# refuse every client that is not on the pod's loopback.
protected-mode {{ ternary "yes" "no" .Values.auth.enabled }}
dir /data
# AOF with fsync every second: a result and its acknowledgement are one Lua
# script, so a restart keeps both or neither.
appendonly {{ ternary "yes" "no" .Values.persistence.enabled }}
appendfsync everysec
save ""
{{- if include "ttg-redis.sentinel" . }}
# Sentinel: a master takes writes only while a replica is connected and at most
# 10 s behind, so a master cut off from the others stops acknowledging results
# a failover would drop (TTG recomputes what a failover drops: see the chart README).
min-replicas-to-write 1
min-replicas-max-lag 10
{{- end }}
{{- with .Values.extraConfig }}
# extraConfig
{{ . | trim }}
{{- end }}
{{- end }}

{{- /*
ttg-redis.manifests: every object, in the order the parent has always rendered
them (Helm sorts them by kind; objects of one kind keep this order). Each
starts a new line: the object templates begin with `---`.
*/ -}}
{{- define "ttg-redis.manifests" -}}
{{- range list "certificate" "secret" "configmap" "service" "statefulset" "networkpolicy" }}
{{ include (printf "ttg-redis.%s" .) $ }}
{{- end }}
{{- end }}

{{- /*
ttg-redis.standalone (list . "statefulset"): renders that object when this chart
is installed on its own, with the context the ttg chart would give it.
*/ -}}
{{- define "ttg-redis.standalone" -}}
{{- $root := index . 0 }}
{{- if $root.Values.standalone }}
{{- $ctx := dict
      "Values" $root.Values
      "Release" $root.Release
      "Capabilities" $root.Capabilities
      "fullname" (printf "%s-redis" ($root.Release.Name | trunc 46 | trimSuffix "-"))
      "labels" (dict "app.kubernetes.io/managed-by" $root.Release.Service)
      "clients" (dict "app.kubernetes.io/part-of" "ttg" "ttg.io/release" $root.Release.Name) }}
{{- include (printf "ttg-redis.%s" (index . 1)) $ctx }}
{{- end }}
{{- end }}
