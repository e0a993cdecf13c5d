{{/* Chart name, truncated to the DNS label limit. */}}
{{- define "vluna-bff.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name: the release name, plus the chart name unless it already holds it. */}}
{{- define "vluna-bff.fullname" -}}
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

{{- define "vluna-bff.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "vluna-bff.selectorLabels" -}}
app.kubernetes.io/name: {{ include "vluna-bff.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "vluna-bff.labels" -}}
helm.sh/chart: {{ include "vluna-bff.chart" . }}
{{ include "vluna-bff.selectorLabels" . }}
app.kubernetes.io/version: {{ (default .Chart.AppVersion .Values.image.tag) | quote }}
app.kubernetes.io/component: bff
app.kubernetes.io/part-of: vluna
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "vluna-bff.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "vluna-bff.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "vluna-bff.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* Where the chart mounts things inside the pod. */}}
{{- define "vluna-bff.configDir" -}}/etc/vluna-bff{{- end }}
{{- define "vluna-bff.secretDir" -}}/var/run/secrets/vluna-bff{{- end }}

{{/* The Secret the pod reads: the existing one, or the one the chart creates. */}}
{{- define "vluna-bff.secretName" -}}
{{- default (include "vluna-bff.fullname" .) .Values.secrets.existingSecret }}
{{- end }}

{{/*
Each secret value and the setting it feeds: VLUNA_BFF__<PATH>_FILE=<file> (bff/settings.py).
*/}}
{{- define "vluna-bff.secretSettings" -}}
serviceKeySecret: VLUNA_BFF__VLUNA__SERVICE_KEY_SECRET_FILE
encryptionKeys: VLUNA_BFF__CACHE__ENCRYPTION_KEYS_FILE
hmacKey: VLUNA_BFF__CACHE__HMAC_KEY_FILE
redisUrl: VLUNA_BFF__CACHE__REDIS__URL_FILE
redisSentinelPassword: VLUNA_BFF__CACHE__REDIS__SENTINEL_PASSWORD_FILE
jwtHsSecret: VLUNA_BFF__AUTH__JWT__HS_SECRET_FILE
{{- end }}

{{/*
The secret items in use, as YAML {name: key in the Secret}: with existingSecret every item with a
key name; otherwise the items that have both a key name and a value.
*/}}
{{- define "vluna-bff.secretItems" -}}
{{- $used := dict }}
{{- range $name, $env := include "vluna-bff.secretSettings" . | fromYaml }}
{{- $key := index $.Values.secrets.keys $name | default "" }}
{{- if and $key (or $.Values.secrets.existingSecret (index $.Values.secrets $name)) }}
{{- $_ := set $used $name $key }}
{{- end }}
{{- end }}
{{- toYaml $used }}
{{- end }}

{{/* The listen address: all interfaces, IPv4 unless config.server.host is "::". */}}
{{- define "vluna-bff.listenHost" -}}
{{- $server := (.Values.config | default dict).server | default dict }}
{{- get $server "host" | default "0.0.0.0" }}
{{- end }}

{{/* The configuration file: values.config with the listen address the chart controls. */}}
{{- define "vluna-bff.config" -}}
{{- $cfg := deepCopy (.Values.config | default dict) }}
{{- $server := get $cfg "server" | default dict }}
{{- if and (hasKey $server "port") (ne (int (get $server "port")) (int .Values.containerPort)) }}
{{- fail (printf "config.server.port (%v) differs from containerPort (%v): set containerPort only" (get $server "port") .Values.containerPort) }}
{{- end }}
{{- $_ := set $server "host" (include "vluna-bff.listenHost" .) }}
{{- $_ := set $server "port" (int .Values.containerPort) }}
{{- $_ := set $cfg "server" $server }}
{{- toYaml $cfg }}
{{- end }}

{{/* The observability section of values.config (a dict, possibly empty). */}}
{{- define "vluna-bff.observability" -}}
{{- toYaml ((.Values.config | default dict).observability | default dict) }}
{{- end }}

{{/* The separate metrics port (config.observability.metrics.port), or "" when /metrics is on the main port. */}}
{{- define "vluna-bff.metricsPort" -}}
{{- $m := (include "vluna-bff.observability" . | fromYaml).metrics | default dict }}
{{- with get $m "port" }}{{ . }}{{ end }}
{{- end }}

{{/* Values that cannot work together: fail at render time rather than in the cluster. */}}
{{- define "vluna-bff.validate" -}}
{{- $o := include "vluna-bff.observability" . | fromYaml }}
{{- $m := $o.metrics | default dict }}
{{- $grace := int (get $o "shutdown_grace_sec" | default 20) }}
{{- if le (int .Values.terminationGracePeriodSeconds) (add (int .Values.preStopSleepSeconds) $grace) }}
{{- fail (printf "terminationGracePeriodSeconds (%v) must exceed preStopSleepSeconds (%v) + config.observability.shutdown_grace_sec (%v)" .Values.terminationGracePeriodSeconds .Values.preStopSleepSeconds $grace) }}
{{- end }}
{{- if and .Values.serviceMonitor.enabled (eq (toString (get $m "enabled")) "false") }}
{{- fail "serviceMonitor.enabled needs config.observability.metrics.enabled (not false)" }}
{{- end }}
{{- $mp := include "vluna-bff.metricsPort" . }}
{{- if and $mp (eq (int $mp) (int .Values.containerPort)) }}
{{- fail "config.observability.metrics.port must differ from containerPort" }}
{{- end }}
{{- end }}
