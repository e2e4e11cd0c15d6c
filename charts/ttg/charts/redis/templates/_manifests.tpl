{{- /*
ttg-redis.manifests renders every object of this chart from a context dict:
  Values    this chart's values (under the ttg chart: the parent's .Values.redis,
            which Helm has already merged with this chart's defaults)
  Release   the release
  Capabilities  the cluster's (for cert-manager's API)
  fullname  object name, e.g. ttg-redis
  labels    labels every object carries
  clients   labels of the pods the NetworkPolicy admits
  imagePullSecrets  the parent chart's (optional; added to this chart's own)
It is a named template, not a plain one, so that the parent can render it when
its one `backend` value says so: a subchart's own templates can only be gated by
a boolean `condition:`, which `--set backend=rabbitmq` alone cannot flip.
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

{{- /* ttg-redis.clientUrl: TTG_BROKER_URL (the password comes from the Secret). */ -}}
{{- define "ttg-redis.clientUrl" -}}
{{- printf "%s://%s:6379/0" (ternary "rediss" "redis" .Values.tls.enabled) .fullname }}
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
{{- with .Values.extraConfig }}
# extraConfig
{{ . | trim }}
{{- end }}
{{- end }}

{{- define "ttg-redis.manifests" -}}
{{- $secretName := include "ttg-redis.secretName" . }}
{{- include "ttg-redis.certificates" . }}
{{- if and .Values.auth.enabled (not .Values.auth.existingSecret) }}
{{- /* Generated once; later upgrades reuse the stored password (lookup), so it survives `helm upgrade`. */}}
{{- $existing := lookup "v1" "Secret" .Release.Namespace $secretName }}
{{- $password := randAlphaNum 32 }}
{{- if and $existing (hasKey $existing.data .Values.auth.secretKey) }}
{{- $password = index $existing.data .Values.auth.secretKey | b64dec }}
{{- end }}
---
apiVersion: v1
kind: Secret
metadata:
  name: {{ $secretName }}
  labels:
    {{- include "ttg-redis.labels" . | nindent 4 }}
  annotations:
    # Generated once and reused (lookup): kept by `helm uninstall`, and by an
    # Argo CD prune (resource-policy keep only maps to Argo CD's Delete=false).
    helm.sh/resource-policy: keep
    argocd.argoproj.io/sync-options: Prune=false
type: Opaque
data:
  {{ .Values.auth.secretKey }}: {{ $password | b64enc | quote }}
{{- end }}
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ .fullname }}-config
  labels:
    {{- include "ttg-redis.labels" . | nindent 4 }}
data:
  redis.conf: |
    {{- include "ttg-redis.conf" . | nindent 4 }}
---
apiVersion: v1
kind: Service
metadata:
  name: {{ .fullname }}
  labels:
    {{- include "ttg-redis.labels" . | nindent 4 }}
spec:
  type: ClusterIP
  selector:
    {{- include "ttg-redis.selectorLabels" . | nindent 4 }}
  ports:
    - name: redis
      port: 6379
      targetPort: redis
---
apiVersion: v1
kind: Service
metadata:
  name: {{ .fullname }}-headless
  labels:
    {{- include "ttg-redis.labels" . | nindent 4 }}
spec:
  clusterIP: None
  selector:
    {{- include "ttg-redis.selectorLabels" . | nindent 4 }}
  ports:
    - name: redis
      port: 6379
      targetPort: redis
---
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: {{ .fullname }}
  labels:
    {{- include "ttg-redis.labels" . | nindent 4 }}
spec:
  serviceName: {{ .fullname }}-headless
  replicas: 1
  selector:
    matchLabels:
      {{- include "ttg-redis.selectorLabels" . | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "ttg-redis.labels" . | nindent 8 }}
      annotations:
        # Restart Redis when its redis.conf changes.
        checksum/config: {{ include "ttg-redis.conf" . | sha256sum }}
    spec:
      automountServiceAccountToken: false
      {{- with concat (.imagePullSecrets | default list) .Values.imagePullSecrets | uniq }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      securityContext:
        runAsNonRoot: true
        runAsUser: 999
        runAsGroup: 1000
        fsGroup: 1000
        seccompProfile:
          type: RuntimeDefault
      {{- with .Values.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with .Values.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      containers:
        - name: redis
          image: "{{ .Values.image.repository }}:{{ .Values.image.tag }}"
          imagePullPolicy: {{ .Values.image.pullPolicy }}
          # Settings live in redis.conf (the ConfigMap); only the password, from
          # the Secret, is given on the command line.
          command:
            - sh
            - -c
            - exec redis-server /etc/redis/redis.conf{{ if .Values.auth.enabled }} --requirepass "$REDIS_PASSWORD"{{ end }}
          {{- if .Values.auth.enabled }}
          env:
            - name: REDIS_PASSWORD
              valueFrom:
                secretKeyRef:
                  name: {{ $secretName }}
                  key: {{ .Values.auth.secretKey }}
            - name: REDISCLI_AUTH
              valueFrom:
                secretKeyRef:
                  name: {{ $secretName }}
                  key: {{ .Values.auth.secretKey }}
          {{- end }}
          ports:
            - name: redis
              containerPort: 6379
          startupProbe:
            exec:
              command:
                {{- include "ttg-redis.cli" . | nindent 16 }}
            periodSeconds: 2
            failureThreshold: 60
          livenessProbe:
            exec:
              command:
                {{- include "ttg-redis.cli" . | nindent 16 }}
            periodSeconds: 10
            timeoutSeconds: 5
          readinessProbe:
            exec:
              command:
                {{- include "ttg-redis.cli" . | nindent 16 }}
            periodSeconds: 5
            timeoutSeconds: 3
          resources:
            {{- toYaml .Values.resources | nindent 12 }}
          securityContext:
            allowPrivilegeEscalation: false
            readOnlyRootFilesystem: true
            capabilities:
              drop: ["ALL"]
          volumeMounts:
            - name: data
              mountPath: /data
            - name: config
              mountPath: /etc/redis
              readOnly: true
            - name: tmp
              mountPath: /tmp
            {{- if .Values.tls.enabled }}
            - name: tls
              mountPath: /tls
              readOnly: true
            {{- end }}
      volumes:
        - name: config
          configMap:
            name: {{ .fullname }}-config
        - name: tmp
          emptyDir: {}
        {{- if .Values.tls.enabled }}
        # tls.crt, tls.key, ca.crt; group-readable for the fsGroup, nobody else.
        - name: tls
          secret:
            secretName: {{ include "ttg-redis.tlsSecretName" . }}
            defaultMode: 0440
        {{- end }}
        {{- if not .Values.persistence.enabled }}
        - name: data
          emptyDir: {}
        {{- end }}
  {{- if .Values.persistence.enabled }}
  volumeClaimTemplates:
    - metadata:
        name: data
        labels:
          {{- include "ttg-redis.selectorLabels" . | nindent 10 }}
      spec:
        accessModes: ["ReadWriteOnce"]
        {{- with .Values.persistence.storageClass }}
        storageClassName: {{ . }}
        {{- end }}
        resources:
          requests:
            storage: {{ .Values.persistence.size }}
  {{- end }}
{{- if .Values.networkPolicy.enabled }}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: {{ .fullname }}
  labels:
    {{- include "ttg-redis.labels" . | nindent 4 }}
spec:
  podSelector:
    matchLabels:
      {{- include "ttg-redis.selectorLabels" . | nindent 6 }}
  policyTypes: ["Ingress"]
  ingress:
    - from:
        - podSelector:
            matchLabels:
              {{- toYaml .clients | nindent 14 }}
      ports:
        - port: redis
          protocol: TCP
{{- end }}
{{- end }}
