{{- /*
The results store (docs/contract.md, "Results store"): results.url is recorded in
each run when the seeding Job seeds it; workers then write there, whatever their
own settings. A file:// store is a volume mounted at the URL's path in every pod
that reads or writes results; an s3:// store is reached with the AWS variables.
*/ -}}

{{- /* The mount path of a file:// store ("" otherwise). */ -}}
{{- define "ttg.resultsPath" -}}
{{- if hasPrefix "file:///" .Values.results.url }}
{{- trimPrefix "file://" .Values.results.url | trimSuffix "/" }}
{{- end }}
{{- end }}

{{- define "ttg.resultsClaim" -}}
{{- .Values.results.persistence.existingClaim | default (include "ttg.componentName" (list . "results")) }}
{{- end }}

{{- /* Refuse values that cannot work, with the field to fix. */ -}}
{{- define "ttg.resultsCheck" -}}
{{- $url := .Values.results.url }}
{{- if not (or (eq $url "broker") (hasPrefix "file:///" $url) (hasPrefix "s3://" $url)) }}
{{- fail (printf "results.url %q: expected broker, file:///PATH or s3://BUCKET/PREFIX" $url) }}
{{- end }}
{{- if and (hasPrefix "file:///" $url) (not (or .Values.results.persistence.enabled .Values.results.persistence.existingClaim)) }}
{{- fail "results.url is a file:// store: set results.persistence.enabled (a ReadWriteMany claim the chart creates) or results.persistence.existingClaim, so every pod mounts the same volume at that path" }}
{{- end }}
{{- if and (or .Values.results.persistence.enabled .Values.results.persistence.existingClaim) (not (hasPrefix "file:///" $url)) }}
{{- fail "results.persistence is for a file:// store: set results.url to file:///PATH (the path the volume is mounted at)" }}
{{- end }}
{{- end }}

{{- /* Environment of a pod that reads or writes results (nothing for broker and file://). */ -}}
{{- define "ttg.resultsEnv" -}}
{{- include "ttg.resultsCheck" . }}
{{- if hasPrefix "s3://" .Values.results.url }}
{{- with .Values.results.existingSecret }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef: {name: {{ . }}, key: {{ $.Values.results.accessKeyKey }}}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef: {name: {{ . }}, key: {{ $.Values.results.secretKeyKey }}}
- name: AWS_SESSION_TOKEN
  valueFrom:
    secretKeyRef: {name: {{ . }}, key: {{ $.Values.results.sessionTokenKey }}, optional: true}
{{- end }}
{{- with .Values.results.endpoint }}
- name: AWS_ENDPOINT_URL
  value: {{ . | quote }}
{{- end }}
{{- with .Values.results.region }}
- name: AWS_REGION
  value: {{ . | quote }}
{{- end }}
{{- end }}
{{- end }}

{{- define "ttg.resultsVolumes" -}}
{{- if include "ttg.resultsPath" . }}
- name: results
  persistentVolumeClaim:
    claimName: {{ include "ttg.resultsClaim" . }}
{{- end }}
{{- end }}

{{- define "ttg.resultsVolumeMounts" -}}
{{- with include "ttg.resultsPath" . }}
- {name: results, mountPath: {{ . }}}
{{- end }}
{{- end }}
