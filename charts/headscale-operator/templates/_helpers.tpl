{{/*
Name of the chart, overridable with nameOverride.
*/}}
{{- define "headscale-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Name of the operator's objects: fullnameOverride, or the release name when it already
contains the chart name, or "<release>-<chart>". Kept to 63 characters (DNS label).
*/}}
{{- define "headscale-operator.fullname" -}}
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

{{/*
Labels every object of the release carries, without a component.
*/}}
{{- define "headscale-operator.commonLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "headscale-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ include "headscale-operator.imageTag" . | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: headscale-operator
{{- end }}

{{/*
Labels of the operator's own objects (Deployment, RBAC, Service, monitoring).
*/}}
{{- define "headscale-operator.labels" -}}
{{ include "headscale-operator.commonLabels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{/*
Selector labels: stable across upgrades (a Deployment's selector is immutable), so no version.
*/}}
{{- define "headscale-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "headscale-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/*
The ServiceAccount the operator runs as.
*/}}
{{- define "headscale-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "headscale-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Image tag: image.tag, or the chart's appVersion.
*/}}
{{- define "headscale-operator.imageTag" -}}
{{- .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/*
Full image reference; a digest, when given, pins the image and wins over the tag.
*/}}
{{- define "headscale-operator.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (include "headscale-operator.imageTag" .) }}
{{- end }}
{{- end }}
