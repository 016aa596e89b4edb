{{/* Names. The job label the rules select on is app.kubernetes.io/name (the chart name, "gaudi-exporter"). */}}
{{- define "gaudi-exporter.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "gaudi-exporter.fullname" -}}
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

{{- define "gaudi-exporter.namespace" -}}
{{- default .Release.Namespace .Values.namespaceOverride }}
{{- end }}

{{/* Labels on every object. The kustomize base gets only the chart-independent ones. */}}
{{- define "gaudi-exporter.labels" -}}
app.kubernetes.io/name: {{ include "gaudi-exporter.name" . }}
app.kubernetes.io/part-of: gaudi-exporter
{{- if not .Values.renderForKustomize }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels of one component: (dict "ctx" $ "component" "node-agent"). */}}
{{- define "gaudi-exporter.selectorLabels" -}}
app.kubernetes.io/name: {{ include "gaudi-exporter.name" .ctx }}
{{- if not .ctx.Values.renderForKustomize }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
{{- end }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "gaudi-exporter.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{- define "gaudi-exporter.nodeServiceAccount" -}}
{{- if .Values.node.serviceAccount.create }}
{{- default (printf "%s-node" (include "gaudi-exporter.fullname" .)) .Values.node.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.node.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "gaudi-exporter.marketServiceAccount" -}}
{{- if .Values.marketWatcher.serviceAccount.create }}
{{- default (printf "%s-market" (include "gaudi-exporter.fullname" .)) .Values.marketWatcher.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.marketWatcher.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The ServiceAccount annotations: the user's, plus the IRSA role when pricing.aws.irsa.roleArn is set. */}}
{{- define "gaudi-exporter.serviceAccountAnnotations" -}}
{{- $a := deepCopy (.annotations | default dict) }}
{{- with .ctx.Values.aws.irsa.roleArn }}
{{- $_ := set $a "eks.amazonaws.com/role-arn" . }}
{{- if $.ctx.Values.aws.irsa.stsRegionalEndpoints }}
{{- $_ := set $a "eks.amazonaws.com/sts-regional-endpoints" "true" }}
{{- end }}
{{- end }}
{{- if $a }}
annotations:
  {{- toYaml $a | nindent 2 }}
{{- end }}
{{- end }}

{{/* TLS: the Secret mounted into the exporters and the one Prometheus reads. */}}
{{- define "gaudi-exporter.webConfigSecret" -}}
{{- default (printf "%s-web-config" (include "gaudi-exporter.fullname" .)) .Values.web.tls.existingSecret }}
{{- end }}

{{- define "gaudi-exporter.scrapeSecret" -}}
{{- default (printf "%s-scrape" (include "gaudi-exporter.fullname" .)) .Values.web.tls.scrape.existingSecret }}
{{- end }}

{{/* The scheme, tlsConfig and basicAuth of a monitor endpoint when TLS is on. */}}
{{- define "gaudi-exporter.monitorTLS" -}}
{{- if .Values.web.tls.enabled }}
scheme: https
# Prometheus scrapes pod IPs, which the certificate does not name: it checks the certificate against serverName,
# which must be a DNS name in it (subjectAltName DNS:<serverName>).
tlsConfig:
  serverName: {{ .Values.web.tls.scrape.serverName }}
  ca:
    secret:
      name: {{ include "gaudi-exporter.scrapeSecret" . }}
      key: ca.crt
{{- if .Values.web.tls.scrape.basicAuth }}
basicAuth:
  username:
    name: {{ include "gaudi-exporter.scrapeSecret" . }}
    key: username
  password:
    name: {{ include "gaudi-exporter.scrapeSecret" . }}
    key: password
{{- end }}
{{- end }}
{{- end }}

{{/* The relabelings every exporter monitor ends with; (dict "node" true) adds the node label first. */}}
{{- define "gaudi-exporter.relabelings" -}}
{{- if .node }}
# node = the Kubernetes node name, for joins with kube-state-metrics and node-exporter.
- sourceLabels: [__meta_kubernetes_pod_node_name]
  targetLabel: node
  action: replace
{{- end }}
# The Prometheus Operator gives every target namespace/pod/container labels naming the exporter's
# own pod. The exporter's per-HPU series carry labels of the same names for the pod that holds the
# HPU (empty when none), so with honor_labels false Prometheus would rename ours exported_namespace/...
# and stamp the exporter pod on node-level series. Drop the target's three: HPU series keep the
# workload's, node series carry none. (Not honorLabels: scraped job/instance would win too.)
- action: labeldrop
  regex: namespace|pod|container
{{- with .extra }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Seconds in a Prometheus duration ("1h30m" -> 5400), printed as Python's "{:g}" prints it. */}}
{{- define "gaudi-exporter.durationSeconds" -}}
{{- $units := dict "ms" 0.001 "s" 1.0 "m" 60.0 "h" 3600.0 "d" 86400.0 "w" 604800.0 "y" 31536000.0 }}
{{- $total := 0.0 }}
{{- range regexFindAll "[0-9]+(ms|s|m|h|d|w|y)" (toString .) -1 }}
{{- $n := regexFind "^[0-9]+" . }}
{{- $total = addf $total (mulf (float64 $n) (get $units (trimPrefix $n .))) }}
{{- end }}
{{- printf "%.6g" $total }}
{{- end }}
