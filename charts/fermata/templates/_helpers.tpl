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

{{/* The settings ConfigMap (FERMATA_* variables, taken with envFrom). */}}
{{- define "fermata.settingsName" -}}
{{- printf "%s-settings" (include "fermata.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The state volume can be mounted by several pods at once: an emptyDir per pod, or a claim that
is ReadWriteMany.
*/}}
{{- define "fermata.stateShareable" -}}
{{- if or (not .Values.persistence.enabled) (has "ReadWriteMany" .Values.persistence.accessModes) }}true{{ end }}
{{- end }}

{{/* Refuses values fermata would refuse at start, or that are unsafe; renders nothing. */}}
{{- define "fermata.validate" -}}
{{- $replicas := int .Values.replicaCount }}
{{- if lt $replicas 1 }}
{{- fail "replicaCount must be at least 1" }}
{{- end }}
{{- if and (gt $replicas 1) (not .Values.leaderElection.enabled) }}
{{- fail (printf "replicaCount %d needs leaderElection.enabled=true: without it every replica would apply and commit status" $replicas) }}
{{- end }}
{{- if and (gt $replicas 1) (not (include "fermata.stateShareable" .)) }}
{{- fail (printf "replicaCount %d cannot share a ReadWriteOnce volume: set persistence.enabled=false (an emptyDir per pod; mirrors and caches are rebuilt) or persistence.accessModes=[ReadWriteMany]" $replicas) }}
{{- end }}
{{- if and .Values.leaderElection.enabled (not .Values.serviceAccount.automount) }}
{{- fail "leaderElection.enabled needs serviceAccount.automount=true: the Lease is read and written with the ServiceAccount's token" }}
{{- end }}
{{- range .Values.git.branches }}
{{- if contains "," . }}
{{- fail (printf "git.branches: %q contains a comma, which FERMATA_BRANCHES cannot carry" .) }}
{{- end }}
{{- end }}
{{- range .Values.artifacts.roots }}
{{- if contains "," . }}
{{- fail (printf "artifacts.roots: %q contains a comma, which FERMATA_ARTIFACT_ROOTS cannot carry" .) }}
{{- end }}
{{- end }}
{{- if and .Values.git.sshKey.existingSecret (not .Values.git.knownHosts) }}
{{- fail "git.knownHosts is required with git.sshKey.existingSecret: libgit2 refuses an SSH host key that is not in ~/.ssh/known_hosts" }}
{{- end }}
{{- with .Values.forge.kind }}
{{- if not (has . (list "github" "gitea" "gitlab")) }}
{{- fail (printf "forge.kind must be github, gitea or gitlab, not %q" .) }}
{{- end }}
{{- if not $.Values.forge.repo }}
{{- fail "forge.repo is required with forge.kind: OWNER/NAME (GitLab: the project path GROUP[/SUBGROUP]/NAME)" }}
{{- end }}
{{- if and (ne . "github") (not $.Values.forge.url) }}
{{- fail (printf "forge.url is required with forge.kind=%s: the server, e.g. https://git.example.com" .) }}
{{- end }}
{{- if not $.Values.forge.token.existingSecret }}
{{- fail "forge.token.existingSecret is required with forge.kind: the Secret holding the forge's API token" }}
{{- end }}
{{- else }}
{{- if or .Values.forge.url .Values.forge.repo .Values.forge.token.existingSecret }}
{{- fail "forge.url, forge.repo and forge.token need forge.kind (github, gitea or gitlab)" }}
{{- end }}
{{- end }}
{{- with .Values.verifySignatures.format }}
{{- if not (has . (list "ssh" "gpg")) }}
{{- fail (printf "verifySignatures.format must be ssh or gpg, not %q" .) }}
{{- end }}
{{- if not $.Values.verifySignatures.existingConfigMap }}
{{- fail "verifySignatures.existingConfigMap is required with verifySignatures.format: the ConfigMap holding the trusted keys" }}
{{- end }}
{{- else }}
{{- if .Values.verifySignatures.existingConfigMap }}
{{- fail "verifySignatures.existingConfigMap needs verifySignatures.format (ssh or gpg)" }}
{{- end }}
{{- end }}
{{- end }}
