{{/* The chart name, overridable. */}}
{{- define "kubervisor.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The full name of the release's objects, at most 63 characters (a DNS label). */}}
{{- define "kubervisor.fullname" -}}
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

{{- define "kubervisor.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "kubervisor.labels" -}}
helm.sh/chart: {{ include "kubervisor.chart" . }}
{{ include "kubervisor.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "kubervisor.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kubervisor.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "kubervisor.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kubervisor.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "kubervisor.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/*
The rules for the resources the operator watches and acts on. The same list serves
the cluster-wide ClusterRole and the single-namespace Role, so both grant the same.
*/}}
{{- define "kubervisor.workloadRules" -}}
# Pods are relabelled (traffic yes/no/pause) and, by retryAndKill with killMethod
# delete, deleted.
- apiGroups: [""]
  resources: [pods]
  verbs: [list, watch, patch, delete]
# Kills go through the Eviction API by default, so PodDisruptionBudgets are honoured.
- apiGroups: [""]
  resources: [pods/eviction]
  verbs: [create]
# In readiness-gate mode, ejection sets the pod condition kubervisor.k8s.io/traffic.
- apiGroups: [""]
  resources: [pods/status]
  verbs: [patch]
# Services are only read: their selectors tell which pods are guarded.
- apiGroups: [""]
  resources: [services]
  verbs: [list, watch]
# KubervisorServices are watched and patched to add and remove the finalizer.
- apiGroups: [kubervisor.k8s.io]
  resources: [kubervisorservices]
  verbs: [list, watch, patch]
- apiGroups: [kubervisor.k8s.io]
  resources: [kubervisorservices/status]
  verbs: [patch]
# Every decision is reported as an event on the KubervisorService or the pod.
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create]
{{- end }}
