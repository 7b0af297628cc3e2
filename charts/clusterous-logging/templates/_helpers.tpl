{{/* Prefix of every object name: the release name (`up` names the release clusterous-logging). */}}
{{- define "clusterous-logging.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Labels every object carries. */}}
{{- define "clusterous-logging.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: clusterous-k8s
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Selector labels of one part (collector, loki, grafana); pass (list $ "part"). */}}
{{- define "clusterous-logging.selector" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ $root.Chart.Name }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{/* Loki's in-cluster address, used by the collector and by Grafana's data source. */}}
{{- define "clusterous-logging.lokiURL" -}}
{{- printf "http://%s-loki.%s.svc.cluster.local:3100" (include "clusterous-logging.fullname" .) .Release.Namespace -}}
{{- end -}}

{{/* An image reference; refuses `latest` so every deployment is reproducible. */}}
{{- define "clusterous-logging.image" -}}
{{- if or (eq .tag "latest") (eq .tag "") -}}
{{- fail (printf "image %s: pin a version tag, not %q" .repository .tag) -}}
{{- end -}}
{{- if not (regexMatch "^sha256:[0-9a-f]{64}$" (.digest | default "")) -}}
{{- fail (printf "image %s:%s: pin its digest (digest: sha256:<64 hex>), not %q" .repository .tag (.digest | default "")) -}}
{{- end -}}
{{- printf "%s:%s@%s" .repository .tag .digest -}}
{{- end -}}
