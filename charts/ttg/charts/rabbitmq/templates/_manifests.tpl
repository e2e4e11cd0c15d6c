{{- /*
ttg-rabbitmq.manifests renders every object of this chart from a context dict
(Values, Release, Capabilities, fullname, labels, clients, imagePullSecrets),
like ttg-redis.manifests: a named template so that the parent's one `backend`
value decides whether it renders.
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

{{- /* The AMQP port: 5671 (amqps) with TLS, which is then the only one; else 5672. */ -}}
{{- define "ttg-rabbitmq.amqpPort" -}}
{{- ternary 5671 5672 .Values.tls.enabled }}
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

{{- define "ttg-rabbitmq.manifests" -}}
{{- $secretName := include "ttg-rabbitmq.secretName" . }}
{{- $clustered := include "ttg-rabbitmq.clustered" . }}
{{- $tls := .Values.tls }}
{{- $amqpPort := include "ttg-rabbitmq.amqpPort" . | int }}
{{- $amqpName := ternary "amqps" "amqp" $tls.enabled }}
{{- $managementPort := include "ttg-rabbitmq.managementPort" . | int }}
{{- include "ttg-rabbitmq.certificates" . }}
{{- if not .Values.auth.existingSecret }}
{{- /* Generated once; later upgrades reuse the stored password (lookup), so it survives `helm upgrade`. */}}
{{- $existing := lookup "v1" "Secret" .Release.Namespace $secretName }}
{{- $stored := dict }}
{{- if $existing }}{{ $stored = $existing.data | default dict }}{{ end }}
{{- $password := randAlphaNum 32 }}
{{- if hasKey $stored "password" }}{{ $password = index $stored "password" | b64dec }}{{ end }}
{{- $cookie := randAlphaNum 48 }}
{{- if hasKey $stored "erlang-cookie" }}{{ $cookie = index $stored "erlang-cookie" | b64dec }}{{ end }}
---
apiVersion: v1
kind: Secret
metadata:
  name: {{ $secretName }}
  labels:
    {{- include "ttg-rabbitmq.labels" . | nindent 4 }}
  annotations:
    # Generated once and reused (lookup): kept by `helm uninstall`, and by an
    # Argo CD prune (resource-policy keep only maps to Argo CD's Delete=false).
    helm.sh/resource-policy: keep
    argocd.argoproj.io/sync-options: Prune=false
type: Opaque
data:
  username: {{ .Values.auth.username | b64enc | quote }}
  password: {{ $password | b64enc | quote }}
  # The Erlang distribution cookie: the node and its CLI tools (the liveness
  # probe) must share it. Written to the data volume owner-only at every start.
  erlang-cookie: {{ $cookie | b64enc | quote }}
{{- end }}
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ .fullname }}-config
  labels:
    {{- include "ttg-rabbitmq.labels" . | nindent 4 }}
data:
  rabbitmq.conf: |
    {{- if $tls.enabled }}
    # TLS only: no plaintext AMQP listener.
    listeners.tcp = none
    listeners.ssl.default = {{ $amqpPort }}
    ssl_options.cacertfile = /tls/ca.crt
    ssl_options.certfile = /tls/tls.crt
    ssl_options.keyfile = /tls/tls.key
    {{- if $tls.clientAuth.enabled }}
    # Mutual TLS: only clients with a certificate the CA in ca.crt signed.
    ssl_options.verify = verify_peer
    ssl_options.fail_if_no_peer_cert = true
    {{- else }}
    ssl_options.verify = verify_none
    ssl_options.fail_if_no_peer_cert = false
    {{- end }}
    {{- else }}
    listeners.tcp.default = 5672
    {{- end }}
    prometheus.tcp.port = 15692
    loopback_users = none
    # Logs go to stdout only: the root filesystem is read-only.
    log.console = true
    log.file = false
    # A worker holds a delivery unacknowledged while it computes the chunk.
    consumer_timeout = {{ int64 .Values.consumerTimeoutMs }}
    # Quorum queues (tasks, with delivery limits) and streams (the ledger) are core
    # features; nothing to enable.
    {{- if $clustered }}
    # Cluster formation, on a node's first boot only. RabbitMQ 4.1+'s Kubernetes
    # peer discovery derives the seed node from this node's own name (the -0 pod
    # of the StatefulSet forms the cluster; the others join it, retrying until it
    # answers). It reads nothing from the Kubernetes API: the pods need no
    # ServiceAccount token and the chart grants no RBAC.
    cluster_formation.peer_discovery_backend = rabbit_peer_discovery_k8s
    cluster_formation.target_cluster_size_hint = {{ int .Values.replicas }}
    {{- end }}
    {{- if .Values.managementUI.enabled }}
    # The management UI (log in with the Secret's username and password).
    {{- if $tls.enabled }}
    management.ssl.port = {{ $managementPort }}
    management.ssl.cacertfile = /tls/ca.crt
    management.ssl.certfile = /tls/tls.crt
    management.ssl.keyfile = /tls/tls.key
    {{- else }}
    management.tcp.port = {{ $managementPort }}
    {{- end }}
    {{- end }}
    {{- with .Values.extraConfig }}
    {{- . | nindent 4 }}
    {{- end }}
  enabled_plugins: |
    {{ include "ttg-rabbitmq.plugins" . }}
---
apiVersion: v1
kind: Service
metadata:
  name: {{ .fullname }}
  labels:
    {{- include "ttg-rabbitmq.labels" . | nindent 4 }}
spec:
  type: ClusterIP
  selector:
    {{- include "ttg-rabbitmq.selectorLabels" . | nindent 4 }}
  ports:
    - name: {{ $amqpName }}
      port: {{ $amqpPort }}
      targetPort: {{ $amqpName }}
    - name: prometheus
      port: 15692
      targetPort: prometheus
    {{- if .Values.managementUI.enabled }}
    - name: management
      port: {{ $managementPort }}
      targetPort: management
    {{- end }}
---
apiVersion: v1
kind: Service
metadata:
  name: {{ .fullname }}-headless
  labels:
    {{- include "ttg-rabbitmq.labels" . | nindent 4 }}
spec:
  clusterIP: None
  publishNotReadyAddresses: true
  selector:
    {{- include "ttg-rabbitmq.selectorLabels" . | nindent 4 }}
  ports:
    - name: epmd
      port: 4369
    - name: dist
      port: 25672
    - name: {{ $amqpName }}
      port: {{ $amqpPort }}
---
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: {{ .fullname }}
  labels:
    {{- include "ttg-rabbitmq.labels" . | nindent 4 }}
spec:
  serviceName: {{ .fullname }}-headless
  replicas: {{ int .Values.replicas }}
  {{- if $clustered }}
  # What RabbitMQ recommends on Kubernetes: OrderedReady could deadlock a
  # restart of every node (each waits for its peers before it is ready). Only
  # the -0 pod forms a new cluster, so starting in parallel is safe.
  podManagementPolicy: Parallel
  {{- end }}
  selector:
    matchLabels:
      {{- include "ttg-rabbitmq.selectorLabels" . | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "ttg-rabbitmq.labels" . | nindent 8 }}
      annotations:
        checksum/config: {{ .Values | toJson | sha256sum }}
    spec:
      automountServiceAccountToken: false
      {{- with concat (.imagePullSecrets | default list) .Values.imagePullSecrets | uniq }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      securityContext:
        runAsNonRoot: true
        runAsUser: 999
        runAsGroup: 999
        fsGroup: 999
        # Change ownership only when the volume's root does not match yet (first
        # mount), not recursively on every start of a large data volume.
        fsGroupChangePolicy: OnRootMismatch
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
      {{- if $clustered }}
      # One node per Kubernetes node, so losing a Kubernetes node costs the
      # cluster one member (its quorum survives).
      affinity:
        podAntiAffinity:
          {{- $term := dict "topologyKey" "kubernetes.io/hostname" "labelSelector" (dict "matchLabels" (include "ttg-rabbitmq.selectorLabels" . | fromYaml)) }}
          {{- if eq .Values.podAntiAffinity "hard" }}
          requiredDuringSchedulingIgnoredDuringExecution:
            - {{- toYaml $term | nindent 14 }}
          {{- else }}
          preferredDuringSchedulingIgnoredDuringExecution:
            - weight: 100
              podAffinityTerm:
                {{- toYaml $term | nindent 16 }}
          {{- end }}
      {{- end }}
      terminationGracePeriodSeconds: 60
      initContainers:
        # Prepares what the broker reads at start, on every pod start:
        # - the config, with the credentials from the Secret (neither in the
        #   ConfigMap nor on a command line);
        # - the Erlang cookie, rewritten owner-only (0400). The kubelet applies
        #   fsGroup to the data volume on mount and adds group bits to every file,
        #   and Erlang refuses to boot with a cookie others can read. With
        #   existingSecret and no `erlang-cookie` key, the cookie already on the
        #   volume is kept (or one is made) and only its mode is fixed.
        - name: prepare
          image: "{{ .Values.image.repository }}:{{ .Values.image.tag }}"
          imagePullPolicy: {{ .Values.image.pullPolicy }}
          command:
            - sh
            - -ec
            - |
              cp /config/rabbitmq.conf /config/enabled_plugins /etc/rabbitmq/
              printf 'default_user = %s\ndefault_pass = %s\n' "$RABBITMQ_USER" "$RABBITMQ_PASS" >> /etc/rabbitmq/rabbitmq.conf
              cookie=/var/lib/rabbitmq/.erlang.cookie
              if [ -z "$RABBITMQ_COOKIE" ] && [ -s "$cookie" ]; then
                RABBITMQ_COOKIE="$(cat "$cookie")"
              fi
              if [ -z "$RABBITMQ_COOKIE" ]; then
                RABBITMQ_COOKIE="$(head -c 48 /dev/urandom | od -An -tx1 | tr -d ' \n')"
              fi
              rm -f "$cookie"
              (umask 077 && printf '%s' "$RABBITMQ_COOKIE" > "$cookie")
              chmod 0400 "$cookie"
          env:
            - name: RABBITMQ_USER
              valueFrom:
                secretKeyRef: {name: {{ $secretName }}, key: username}
            - name: RABBITMQ_PASS
              valueFrom:
                secretKeyRef: {name: {{ $secretName }}, key: password}
            # A cluster's nodes must share the cookie: there the key is required
            # (the kubelet refuses to start a pod whose Secret lacks it).
            - name: RABBITMQ_COOKIE
              valueFrom:
                secretKeyRef: {name: {{ $secretName }}, key: erlang-cookie, optional: {{ not $clustered }}}
          resources:
            requests: {cpu: 10m, memory: 16Mi}
            limits: {memory: 64Mi}
          securityContext:
            allowPrivilegeEscalation: false
            readOnlyRootFilesystem: true
            capabilities:
              drop: ["ALL"]
          volumeMounts:
            - {name: config-template, mountPath: /config}
            - {name: config, mountPath: /etc/rabbitmq}
            - {name: data, mountPath: /var/lib/rabbitmq}
      containers:
        - name: rabbitmq
          image: "{{ .Values.image.repository }}:{{ .Values.image.tag }}"
          imagePullPolicy: {{ .Values.image.pullPolicy }}
          command: ["rabbitmq-server"]
          env:
            {{- if $clustered }}
            # rabbit@<pod>.<headless>.<namespace>: a name every peer resolves, and
            # whose ordinal suffix peer discovery reads.
            - name: MY_POD_NAME
              valueFrom:
                fieldRef: {fieldPath: metadata.name}
            - name: MY_POD_NAMESPACE
              valueFrom:
                fieldRef: {fieldPath: metadata.namespace}
            - name: RABBITMQ_USE_LONGNAME
              value: "true"
            - name: RABBITMQ_NODENAME
              value: rabbit@$(MY_POD_NAME).{{ .fullname }}-headless.$(MY_POD_NAMESPACE)
            {{- else }}
            # A single node keeps the name its data directory was created under.
            - name: RABBITMQ_NODENAME
              value: rabbit@localhost
            {{- end }}
            - name: RABBITMQ_ENABLED_PLUGINS_FILE
              value: /etc/rabbitmq/enabled_plugins
          ports:
            - {name: {{ $amqpName }}, containerPort: {{ $amqpPort }}}
            - {name: prometheus, containerPort: 15692}
            {{- if .Values.managementUI.enabled }}
            - {name: management, containerPort: {{ $managementPort }}}
            {{- end }}
            {{- if $clustered }}
            - {name: epmd, containerPort: 4369}
            - {name: dist, containerPort: 25672}
            {{- end }}
          startupProbe:
            tcpSocket: {port: {{ $amqpName }}}
            periodSeconds: 5
            failureThreshold: 60
          livenessProbe:
            exec:
              command: ["rabbitmq-diagnostics", "-q", "ping"]
            periodSeconds: 30
            timeoutSeconds: 20
          readinessProbe:
            tcpSocket: {port: {{ $amqpName }}}
            periodSeconds: 5
          resources:
            {{- toYaml .Values.resources | nindent 12 }}
          securityContext:
            allowPrivilegeEscalation: false
            readOnlyRootFilesystem: true
            capabilities:
              drop: ["ALL"]
          volumeMounts:
            - {name: data, mountPath: /var/lib/rabbitmq}
            - {name: config, mountPath: /etc/rabbitmq, readOnly: true}
            - {name: tmp, mountPath: /tmp}
            {{- if $tls.enabled }}
            - {name: tls, mountPath: /tls, readOnly: true}
            {{- end }}
      volumes:
        - name: config-template
          configMap:
            name: {{ .fullname }}-config
        - name: config
          emptyDir: {}
        - name: tmp
          emptyDir: {}
        {{- if $tls.enabled }}
        # tls.crt, tls.key, ca.crt; group-readable for the fsGroup, nobody else.
        - name: tls
          secret:
            secretName: {{ include "ttg-rabbitmq.tlsSecretName" . }}
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
          {{- include "ttg-rabbitmq.selectorLabels" . | nindent 10 }}
      spec:
        accessModes: ["ReadWriteOnce"]
        {{- with .Values.persistence.storageClass }}
        storageClassName: {{ . }}
        {{- end }}
        resources:
          requests:
            storage: {{ .Values.persistence.size }}
  {{- end }}
{{- if $clustered }}
---
# Voluntary disruptions (drains, upgrades) take one node at a time: the
# quorum queues and streams keep a majority of their replicas.
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ .fullname }}
  labels:
    {{- include "ttg-rabbitmq.labels" . | nindent 4 }}
spec:
  maxUnavailable: 1
  selector:
    matchLabels:
      {{- include "ttg-rabbitmq.selectorLabels" . | nindent 6 }}
{{- end }}
{{- if .Values.networkPolicy.enabled }}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: {{ .fullname }}
  labels:
    {{- include "ttg-rabbitmq.labels" . | nindent 4 }}
spec:
  podSelector:
    matchLabels:
      {{- include "ttg-rabbitmq.selectorLabels" . | nindent 6 }}
  policyTypes: ["Ingress"]
  ingress:
    - from:
        - podSelector:
            matchLabels:
              {{- toYaml .clients | nindent 14 }}
      ports:
        - {port: {{ $amqpName }}, protocol: TCP}
    # Prometheus may live in any namespace: scrapes of the metrics port only.
    - ports:
        - {port: prometheus, protocol: TCP}
    {{- if $clustered }}
    # The nodes of the cluster, to each other: Erlang distribution (epmd and the
    # node port, which carry metadata and quorum queue replication) and stream
    # replication (RabbitMQ's default range 6000-6500; the ledger is a stream).
    - from:
        - podSelector:
            matchLabels:
              {{- include "ttg-rabbitmq.selectorLabels" . | nindent 14 }}
      ports:
        - {port: 4369, protocol: TCP}
        - {port: 25672, protocol: TCP}
        - {port: 6000, endPort: 6500, protocol: TCP}
    {{- end }}
    {{- if and .Values.managementUI.enabled .Values.managementUI.allowFrom }}
    # The management UI, from where managementUI.allowFrom says (kubectl
    # port-forward needs no rule: it reaches the pod from its own node).
    - from:
        {{- toYaml .Values.managementUI.allowFrom | nindent 8 }}
      ports:
        - {port: management, protocol: TCP}
    {{- end }}
{{- end }}
{{- end }}
