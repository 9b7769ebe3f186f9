{{- define "pushlite.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "pushlite.fullname" -}}
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

{{- define "pushlite.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "pushlite.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "pushlite.selectorLabels" -}}
app.kubernetes.io/name: {{ include "pushlite.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "pushlite.secretName" -}}
{{- default (include "pushlite.fullname" .) .Values.secrets.existingSecret }}
{{- end }}

{{- define "pushlite.image" -}}
{{ .Values.image.repository }}:{{ default .Chart.AppVersion .Values.image.tag }}
{{- end }}

{{/* Environment shared by the Deployment and the migration Job: all secrets by reference. */}}
{{- define "pushlite.secretEnv" -}}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "pushlite.secretName" . }}
      key: {{ .Values.secrets.keys.databaseUrl }}
- name: REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "pushlite.secretName" . }}
      key: {{ .Values.secrets.keys.redisUrl }}
- name: PUSHER_ADMIN_USERNAME
  valueFrom:
    secretKeyRef:
      name: {{ include "pushlite.secretName" . }}
      key: {{ .Values.secrets.keys.adminUsername }}
- name: PUSHER_ADMIN_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "pushlite.secretName" . }}
      key: {{ .Values.secrets.keys.adminPassword }}
{{- end }}

{{- define "pushlite.securityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* preStop sleep, plus the shutdown timeout (which includes the drain delay), plus a margin, in whole seconds. */}}
{{- define "pushlite.terminationGracePeriod" -}}
{{- add .Values.pushlite.preStopSleepSeconds (div (add .Values.pushlite.shutdownTimeoutMs 999) 1000) 10 }}
{{- end }}

{{/*
The private CA of Redis and Postgres (backendTls.caSecret), for the container and the pod.
*/}}
{{- define "pushlite.backendCaMount" -}}
{{- if .Values.backendTls.caSecret }}
volumeMounts:
  - name: backend-ca
    mountPath: /etc/pushlite/backend-ca
    readOnly: true
{{- end }}
{{- end }}

{{- define "pushlite.backendCaVolume" -}}
{{- if .Values.backendTls.caSecret }}
volumes:
  - name: backend-ca
    secret:
      secretName: {{ .Values.backendTls.caSecret }}
{{- end }}
{{- end }}
