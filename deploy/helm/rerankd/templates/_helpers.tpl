{{/* Name of every object: the release name (one rerankd per release). */}}
{{- define "rerankd.fullname" -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "rerankd.selectorLabels" -}}
app.kubernetes.io/name: rerankd
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "rerankd.labels" -}}
{{ include "rerankd.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: {{ .Values.mode }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* terminationGracePeriodSeconds: preStop sleep + --grace-period + slack, so the kubelet's
SIGKILL never lands while accepted calls may still finish. */}}
{{- define "rerankd.terminationGracePeriodSeconds" -}}
{{- $s := .Values.server -}}
{{- add $s.preStopSleepSeconds $s.gracePeriodSeconds $s.terminationSlackSeconds -}}
{{- end -}}

{{/* A probe on a grpc.health.v1 service name: native gRPC, or the image's healthcheck.py
over TLS when TLS is on (the kubelet's gRPC probes are plaintext only). */}}
{{- define "rerankd.probe" -}}
{{- $v := .root.Values -}}
{{- if $v.tls.existingSecret -}}
exec:
  command:
    - python
    - /opt/rerankd/healthcheck.py
    - --service={{ .service }}
    - --tls-ca=/etc/rerankd/tls/ca.crt
    {{- if $v.tls.mutual }}
    - --tls-cert=/etc/rerankd/tls/tls.crt
    - --tls-key=/etc/rerankd/tls/tls.key
    {{- end }}
    {{- with $v.tls.serverName }}
    - --tls-server-name={{ . }}
    {{- end }}
{{- else -}}
grpc:
  port: {{ $v.server.port }}
  service: {{ .service }}
{{- end }}
periodSeconds: {{ .probe.periodSeconds }}
failureThreshold: {{ .probe.failureThreshold }}
timeoutSeconds: {{ .probe.timeoutSeconds }}
{{- end -}}

{{- define "rerankd.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* The rerankd container; in sidecar mode it is a native sidecar (restartPolicy: Always). */}}
{{- define "rerankd.container" -}}
{{- $v := .Values -}}
name: rerankd
image: {{ printf "%s:%s" $v.image.repository $v.image.tag }}
imagePullPolicy: {{ $v.image.pullPolicy }}
{{- if eq $v.mode "sidecar" }}
restartPolicy: Always
{{- end }}
args:
  - serve
  - --grace-period={{ $v.server.gracePeriodSeconds }}
  {{- range $v.server.extraArgs }}
  - {{ . | quote }}
  {{- end }}
env:
  {{- with $v.model.id }}
  - name: RERANKD_MODEL
    value: {{ . | quote }}
  {{- end }}
  {{- if kindIs "bool" $v.model.offline }}
  - name: HF_HUB_OFFLINE
    value: {{ ternary "1" "0" $v.model.offline | quote }}
  {{- else if not (kindIs "invalid" $v.model.offline) }}
  {{- fail (printf "model.offline must be true, false or null (unset), not %q" (toString $v.model.offline)) }}
  {{- end }}
  - name: RERANKD_PORT
    value: {{ $v.server.port | quote }}
  - name: RERANKD_METRICS_PORT
    value: {{ $v.server.metricsPort | quote }}
  - name: RERANKD_DEVICE
    value: {{ ternary "cuda" "cpu" $v.gpu }}
  - name: RERANKD_MAX_BATCH_TOKENS
    value: {{ $v.server.maxBatchTokens | quote }}
  {{- if $v.auth.existingSecret }}
  - name: RERANKD_AUTH_TOKEN_FILE
    value: /etc/rerankd/auth/tokens
  {{- end }}
  {{- if $v.tls.existingSecret }}
  - name: RERANKD_TLS_CERT
    value: /etc/rerankd/tls/tls.crt
  - name: RERANKD_TLS_KEY
    value: /etc/rerankd/tls/tls.key
  {{- if $v.tls.mutual }}
  - name: RERANKD_TLS_CLIENT_CA
    value: /etc/rerankd/tls/ca.crt
  {{- end }}
  {{- end }}
  {{- range $name, $value := $v.server.env }}
  - name: {{ $name }}
    value: {{ $value | quote }}
  {{- end }}
ports:
  - name: grpc
    containerPort: {{ $v.server.port }}
  - name: metrics
    containerPort: {{ $v.server.metricsPort }}
startupProbe:
  {{- include "rerankd.probe" (dict "root" . "service" "rerankd.v1.RerankService" "probe" $v.probes.startup) | nindent 2 }}
readinessProbe:
  {{- include "rerankd.probe" (dict "root" . "service" "rerankd.v1.RerankService" "probe" $v.probes.readiness) | nindent 2 }}
livenessProbe:
  {{- include "rerankd.probe" (dict "root" . "service" "rerankd.v1.Liveness" "probe" $v.probes.liveness) | nindent 2 }}
lifecycle:
  preStop:
    exec:
      command: ["sleep", "{{ $v.server.preStopSleepSeconds }}"]
resources:
  {{- $resources := deepCopy $v.resources }}
  {{- if $v.gpu }}
  {{- $_ := set $resources "limits" (merge (dict "nvidia.com/gpu" 1) ($resources.limits | default dict)) }}
  {{- $_ := set $resources "requests" (merge (dict "nvidia.com/gpu" 1) ($resources.requests | default dict)) }}
  {{- end }}
  {{- toYaml $resources | nindent 2 }}
securityContext:
  {{- include "rerankd.containerSecurityContext" . | nindent 2 }}
volumeMounts:
  - name: cache
    mountPath: /cache
  - name: tmp
    mountPath: /tmp
  {{- if $v.model.existingClaim }}
  - name: models
    mountPath: /models
    readOnly: true
  {{- end }}
  {{- if $v.auth.existingSecret }}
  - name: auth
    mountPath: /etc/rerankd/auth
    readOnly: true
  {{- end }}
  {{- if $v.tls.existingSecret }}
  - name: tls
    mountPath: /etc/rerankd/tls
    readOnly: true
  {{- end }}
{{- end -}}

{{/* The pod's annotations: podAnnotations, plus prometheus.io/port set to server.metricsPort
whenever podAnnotations has a prometheus.io/scrape key (a prometheus.io/port given there wins). */}}
{{- define "rerankd.podAnnotations" -}}
{{- $annotations := deepCopy (.Values.podAnnotations | default dict) -}}
{{- if hasKey $annotations "prometheus.io/scrape" -}}
{{- $_ := merge $annotations (dict "prometheus.io/port" (toString .Values.server.metricsPort)) -}}
{{- end -}}
{{- with $annotations -}}
{{- toYaml . -}}
{{- end -}}
{{- end -}}

{{/* The pod-level settings and rerankd's volumes, shared by both modes. */}}
{{- define "rerankd.podSpecCommon" -}}
{{- $v := .Values -}}
terminationGracePeriodSeconds: {{ include "rerankd.terminationGracePeriodSeconds" . }}
automountServiceAccountToken: false
enableServiceLinks: false
securityContext:
  runAsNonRoot: true
  runAsUser: 10001
  runAsGroup: 10001
  fsGroup: 10001
  seccompProfile:
    type: RuntimeDefault
{{- with $v.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- if or $v.tolerations $v.gpu }}
tolerations:
  {{- if $v.gpu }}
  - key: nvidia.com/gpu
    operator: Exists
    effect: NoSchedule
  {{- end }}
  {{- with $v.tolerations }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end }}
{{- with $v.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
volumes:
  - name: cache
    emptyDir:
      sizeLimit: {{ $v.model.cacheSizeLimit }}
  - name: tmp
    emptyDir:
      sizeLimit: 1Gi
  {{- with $v.model.existingClaim }}
  - name: models
    persistentVolumeClaim:
      claimName: {{ . }}
      readOnly: true
  {{- end }}
  {{- with $v.auth.existingSecret }}
  - name: auth
    secret:
      secretName: {{ . }}
      defaultMode: 0440
  {{- end }}
  {{- with $v.tls.existingSecret }}
  - name: tls
    secret:
      secretName: {{ . }}
      defaultMode: 0440
  {{- end }}
  {{- with $v.sidecar.volumes }}
  {{- if eq $v.mode "sidecar" }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
  {{- end }}
{{- end -}}
