{{- /*
TLS of the broker (tls.enabled): the Secret with the broker's certificate
(tls.existingSecret, or one a cert-manager Certificate writes), and with
tls.clientAuth the Secret TTG's pods present their client certificate from.
Each named template takes the same context dict as ttg-rabbitmq.manifests;
the parent chart calls the *SecretName ones to mount what its pods need.
*/ -}}
{{- define "ttg-rabbitmq.tlsSecretName" -}}
{{- .Values.tls.existingSecret | default (printf "%s-tls" .fullname) -}}
{{- end }}

{{- define "ttg-rabbitmq.tlsClientSecretName" -}}
{{- .Values.tls.clientAuth.existingSecret | default (printf "%s-client-tls" .fullname) -}}
{{- end }}

{{- /* Every name TTG's pods (and clients in the cluster) may connect with, one per line. */ -}}
{{- define "ttg-rabbitmq.tlsDnsNames" -}}
{{- $ns := .Release.Namespace }}
{{- $domain := .Values.tls.clusterDomain }}
{{- $hosts := list .fullname }}
{{- if include "ttg-rabbitmq.clustered" . }}
{{- $hosts = concat $hosts (splitList "\n" (include "ttg-rabbitmq.hosts" . | trim)) }}
{{- end }}
{{- range $hosts }}
{{ . }}
{{ . }}.{{ $ns }}
{{ . }}.{{ $ns }}.svc
{{ . }}.{{ $ns }}.svc.{{ $domain }}
{{- end }}
{{- range .Values.tls.extraDnsNames }}
{{ . }}
{{- end }}
{{- end }}

{{- /* Fails rendering when TLS is asked for and nothing can provide the certificates. */ -}}
{{- define "ttg-rabbitmq.tlsCheck" -}}
{{- $tls := .Values.tls }}
{{- $certManager := and .Capabilities (.Capabilities.APIVersions.Has "cert-manager.io/v1/Certificate") }}
{{- $needCertManager := or (not $tls.existingSecret) (and $tls.clientAuth.enabled (not $tls.clientAuth.existingSecret)) }}
{{- if and $tls.enabled $needCertManager }}
{{- if not $certManager }}
{{- fail "rabbitmq.tls.enabled=true needs rabbitmq.tls.existingSecret (and tls.clientAuth.existingSecret with clientAuth) or the cert-manager API (cert-manager.io/v1) to issue the certificates" }}
{{- end }}
{{- if not $tls.certManager.issuerRef.name }}
{{- fail "rabbitmq.tls.certManager.issuerRef.name is required: the Issuer or ClusterIssuer that signs the broker's certificate" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "ttg-rabbitmq.certificates" -}}
{{- $tls := .Values.tls }}
{{- if $tls.enabled }}
{{- include "ttg-rabbitmq.tlsCheck" . }}
{{- if not $tls.existingSecret }}
---
apiVersion: cert-manager.io/v1
kind: Certificate
metadata:
  name: {{ .fullname }}-tls
  labels:
    {{- include "ttg-rabbitmq.labels" . | nindent 4 }}
spec:
  secretName: {{ .fullname }}-tls
  issuerRef:
    {{- toYaml $tls.certManager.issuerRef | nindent 4 }}
  # The Service and, for a cluster, every node under the headless Service: the
  # names in TTG_BROKER_URL, which TTG's pods verify the certificate against.
  dnsNames:
    {{- range splitList "\n" (include "ttg-rabbitmq.tlsDnsNames" . | trim) }}
    - {{ . | quote }}
    {{- end }}
  usages: ["server auth"]
  privateKey:
    algorithm: ECDSA
    size: 256
    rotationPolicy: Always
{{- end }}
{{- if and $tls.clientAuth.enabled (not $tls.clientAuth.existingSecret) }}
---
# TTG's client certificate (mutual TLS), from the same issuer: the broker
# trusts the CA in the server Secret's ca.crt.
apiVersion: cert-manager.io/v1
kind: Certificate
metadata:
  name: {{ .fullname }}-client-tls
  labels:
    {{- include "ttg-rabbitmq.labels" . | nindent 4 }}
spec:
  secretName: {{ .fullname }}-client-tls
  commonName: {{ printf "%s-client" .fullname | quote }}
  issuerRef:
    {{- toYaml $tls.certManager.issuerRef | nindent 4 }}
  usages: ["client auth"]
  privateKey:
    algorithm: ECDSA
    size: 256
    rotationPolicy: Always
{{- end }}
{{- end }}
{{- end }}
