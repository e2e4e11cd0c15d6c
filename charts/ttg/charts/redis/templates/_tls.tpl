{{- /*
TLS of the broker (tls.enabled): the Secret with the broker's certificate
(tls.existingSecret, or one a cert-manager Certificate writes, certificate.yaml),
and with tls.clientAuth the Secret TTG's pods present their client certificate
from. Each named template takes the objects' context dict (_helpers.tpl); the
parent chart calls the *SecretName ones to mount what its pods need.
*/ -}}
{{- define "ttg-redis.tlsSecretName" -}}
{{- .Values.tls.existingSecret | default (printf "%s-tls" .fullname) -}}
{{- end }}

{{- define "ttg-redis.tlsClientSecretName" -}}
{{- .Values.tls.clientAuth.existingSecret | default (printf "%s-client-tls" .fullname) -}}
{{- end }}

{{- /* Every name TTG's pods (and clients in the cluster) may connect with, one per line. */ -}}
{{- define "ttg-redis.tlsDnsNames" -}}
{{- $ns := .Release.Namespace }}
{{- $domain := .Values.tls.clusterDomain }}
{{- range list .fullname }}
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
{{- define "ttg-redis.tlsCheck" -}}
{{- $tls := .Values.tls }}
{{- $certManager := and .Capabilities (.Capabilities.APIVersions.Has "cert-manager.io/v1/Certificate") }}
{{- $needCertManager := or (not $tls.existingSecret) (and $tls.clientAuth.enabled (not $tls.clientAuth.existingSecret)) }}
{{- if and $tls.enabled $needCertManager }}
{{- if not $certManager }}
{{- fail "redis.tls.enabled=true needs redis.tls.existingSecret (and tls.clientAuth.existingSecret with clientAuth) or the cert-manager API (cert-manager.io/v1) to issue the certificates" }}
{{- end }}
{{- if not $tls.certManager.issuerRef.name }}
{{- fail "redis.tls.certManager.issuerRef.name is required: the Issuer or ClusterIssuer that signs the broker's certificate" }}
{{- end }}
{{- end }}
{{- end }}
