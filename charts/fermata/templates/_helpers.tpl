{{/* The chart name, or nameOverride. */}}
{{- define "fermata.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name of every resource: fullnameOverride, else the release name, with the chart
name appended unless the release name already contains it. 63 characters at most (DNS label).
*/}}
{{- define "fermata.fullname" -}}
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

{{/* chart label: name-version. */}}
{{- define "fermata.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every resource. */}}
{{- define "fermata.labels" -}}
helm.sh/chart: {{ include "fermata.chart" . }}
{{ include "fermata.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: fermata
{{- end }}

{{/* Labels that select the pod: never change them between upgrades. */}}
{{- define "fermata.selectorLabels" -}}
app.kubernetes.io/name: {{ include "fermata.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The ServiceAccount's name. */}}
{{- define "fermata.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "fermata.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The image reference. */}}
{{- define "fermata.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/* The Secret holding the webhook's shared secret; empty when the webhook is off. */}}
{{- define "fermata.webhookSecretName" -}}
{{- if .Values.webhook.existingSecret }}
{{- .Values.webhook.existingSecret }}
{{- else if .Values.webhook.secret }}
{{- printf "%s-webhook" (include "fermata.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/* The state directory: fixed, so that the PVC, the args and the docs agree. */}}
{{- define "fermata.stateDir" -}}
/var/lib/fermata
{{- end }}
