{{/* The four gRPC services, in a fixed order. */}}
{{- define "tuneforge.serviceNames" -}}
datasets training evaluation checkpoints
{{- end }}

{{- define "tuneforge.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "tuneforge.fullname" -}}
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

{{- define "tuneforge.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "tuneforge.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tuneforge.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "tuneforge.labels" -}}
helm.sh/chart: {{ include "tuneforge.chart" . }}
{{ include "tuneforge.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: tuneforge
{{- end }}

{{- define "tuneforge.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "tuneforge.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name: set the name of an existing ServiceAccount, or serviceAccount.create=true" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Secret names: the existing Secret when one is named, else the one this chart creates. */}}
{{- define "tuneforge.authSecretName" -}}
{{- if and .Values.dev.auth.generateToken (not .Values.auth.existingSecret) (not .Values.auth.tokens) }}
{{- printf "%s-dev-auth" (include "tuneforge.fullname" .) }}
{{- else }}
{{- default (printf "%s-auth" (include "tuneforge.fullname" .)) .Values.auth.existingSecret }}
{{- end }}
{{- end }}
{{- define "tuneforge.s3SecretName" -}}
{{- if .Values.dev.s3.enabled }}
{{- printf "%s-dev-s3" (include "tuneforge.fullname" .) }}
{{- else }}
{{- default (printf "%s-s3" (include "tuneforge.fullname" .)) .Values.objectStore.existingSecret }}
{{- end }}
{{- end }}
{{- define "tuneforge.databaseSecretName" -}}
{{- if .Values.dev.postgres.enabled }}
{{- printf "%s-dev-postgres" (include "tuneforge.fullname" .) }}
{{- else }}
{{- default (printf "%s-database" (include "tuneforge.fullname" .)) .Values.database.existingSecret }}
{{- end }}
{{- end }}
{{/* Key names inside those Secrets (the dev profile's Secrets use the default keys). */}}
{{- define "tuneforge.s3AccessKeyKey" -}}
{{- ternary "accessKey" .Values.objectStore.accessKeyKey .Values.dev.s3.enabled }}
{{- end }}
{{- define "tuneforge.s3SecretKeyKey" -}}
{{- ternary "secretKey" .Values.objectStore.secretKeyKey .Values.dev.s3.enabled }}
{{- end }}
{{- define "tuneforge.databaseUrlKey" -}}
{{- ternary "url" .Values.database.existingSecretKey .Values.dev.postgres.enabled }}
{{- end }}
{{- define "tuneforge.authTokensKey" -}}
{{- if and .Values.dev.auth.generateToken (not .Values.auth.existingSecret) (not .Values.auth.tokens) }}tokens{{ else }}{{ .Values.auth.existingSecretKey }}{{ end }}
{{- end }}
{{- define "tuneforge.raySecretName" -}}
{{- default (printf "%s-ray" (include "tuneforge.fullname" .)) .Values.rayCluster.auth.existingSecret }}
{{- end }}

{{/* Where secrets are mounted; the TUNEFORGE_*_FILE settings point at these files. */}}
{{- define "tuneforge.secretsDir" -}}/var/run/secrets/tuneforge{{- end }}

{{/*
Fail early, with the value to set, when a credential is neither given nor referenced. The chart
never falls back to a default credential.
*/}}
{{- define "tuneforge.validate" -}}
{{- $v := .Values }}
{{- if and (not $v.auth.disabled) (not $v.auth.existingSecret) (not $v.auth.tokens) (not $v.dev.auth.generateToken) }}
{{- fail "auth: no tokens. Set auth.existingSecret to a Secret holding tenant:token pairs under key 'tokens' (or auth.tokens), or auth.disabled=true for a throwaway local stack" }}
{{- end }}
{{- if not $v.dev.s3.enabled }}
{{- $_ := required "objectStore.endpoint is required: the host:port of your S3/MinIO endpoint, e.g. minio.storage.svc:9000 (or dev.s3.enabled=true for a throwaway one)" $v.objectStore.endpoint }}
{{- $_ := required "objectStore.bucket is required: the bucket tuneforge stores datasets and checkpoints in" $v.objectStore.bucket }}
{{- end }}
{{- if and (not $v.dev.s3.enabled) (not $v.objectStore.existingSecret) (or (not $v.objectStore.accessKey) (not $v.objectStore.secretKey)) }}
{{- fail "objectStore: no credentials. Set objectStore.existingSecret to a Secret with keys 'accessKey' and 'secretKey' (or both objectStore.accessKey and objectStore.secretKey)" }}
{{- end }}
{{- if and (not $v.dev.postgres.enabled) (not $v.database.existingSecret) (not $v.database.url) }}
{{- fail "database: no PostgreSQL URL. Set database.existingSecret to a Secret with key 'url' (postgresql+psycopg://user:password@host:5432/db), or database.url" }}
{{- end }}
{{- if and $v.models.existingClaim $v.models.persistence.enabled }}
{{- fail "models: set models.existingClaim (a claim you manage) or models.persistence.enabled=true (a claim the chart creates), not both" }}
{{- end }}
{{- range $g := $v.rayCluster.workerGroups }}
{{- if or (lt (int $g.maxReplicas) (int $g.minReplicas)) (lt (int $g.replicas) (int $g.minReplicas)) (gt (int $g.replicas) (int $g.maxReplicas)) }}
{{- fail (printf "rayCluster.workerGroups[%s]: need minReplicas <= replicas <= maxReplicas (got %v <= %v <= %v)" $g.groupName $g.minReplicas $g.replicas $g.maxReplicas) }}
{{- end }}
{{- end }}
{{- if $v.gate.enabled }}
{{- $ports := dict "service.port" (int $v.service.port) "gate.innerPort" (int $v.gate.innerPort) }}
{{- if $v.metrics.enabled }}
{{- $_ := set $ports "metrics.port" (int $v.metrics.port) }}
{{- $_ := set $ports "gate.metricsPort" (int $v.gate.metricsPort) }}
{{- end }}
{{- $seen := dict }}
{{- range $name := keys $ports | sortAlpha }}
{{- $p := toString (index $ports $name) }}
{{- if hasKey $seen $p }}
{{- fail (printf "%s and %s are both %s: the gate and its service share the pod's network, so each needs its own port" (index $seen $p) $name $p) }}
{{- end }}
{{- $_ := set $seen $p $name }}
{{- end }}
{{- end }}
{{- if and $v.ingress.enabled $v.gateway.enabled }}
{{- fail "ingress.enabled and gateway.enabled: expose the services one way, not both" }}
{{- end }}
{{- if and $v.rayCluster.enabled (not $v.rayCluster.auth.existingSecret) (not $v.rayCluster.auth.token) }}
{{- fail "rayCluster.auth: no Ray token. Set rayCluster.auth.existingSecret to a Secret with key 'token' (or rayCluster.auth.token); Ray clusters run with token authentication" }}
{{- end }}
{{- end }}

{{/* s3://bucket/prefix?endpoint=host:port[&secure=false][&region=r] (no credentials in URIs). */}}
{{- define "tuneforge.objectStoreUri" -}}
{{- $o := .Values.objectStore }}
{{- $path := trimAll "/" $o.prefix }}
{{- if .Values.dev.s3.enabled }}
{{- printf "s3://%s%s?endpoint=%s-s3.%s.svc:9000&secure=false" .Values.dev.s3.bucket (ternary (printf "/%s" $path) "" (ne $path "")) (include "tuneforge.fullname" .) .Release.Namespace }}
{{- else }}
{{- printf "s3://%s%s?endpoint=%s" $o.bucket (ternary (printf "/%s" $path) "" (ne $path "")) $o.endpoint }}
{{- if not $o.secure }}&secure=false{{ end }}
{{- if $o.region }}&region={{ $o.region }}{{ end }}
{{- end }}
{{- end }}

{{/* <registry>/<repository>-<role>:<tag>, the name `make images` gives each role's image. */}}
{{- define "tuneforge.roleImage" -}}
{{- $root := index . 0 }}
{{- $role := index . 1 }}
{{- $i := $root.Values.image }}
{{- printf "%s%s-%s:%s" (ternary (printf "%s/" (trimSuffix "/" $i.registry)) "" (ne $i.registry "")) $i.repository $role (default $root.Chart.AppVersion $i.tag) }}
{{- end }}
{{/* A service's image: datasets runs the datasets image, the others the ml image. */}}
{{- define "tuneforge.image" -}}
{{- $root := index . 0 }}
{{- $svc := index . 1 }}
{{- $cfg := index $root.Values.services $svc }}
{{- $default := include "tuneforge.roleImage" (list $root (ternary "datasets" "ml" (eq $svc "datasets"))) }}
{{- if $cfg.image.repository }}
{{- printf "%s:%s" $cfg.image.repository (default (default $root.Chart.AppVersion $root.Values.image.tag) $cfg.image.tag) }}
{{- else }}
{{- $default }}
{{- end }}
{{- end }}
{{/* A Ray pod's image: (list root gpus groupImage). */}}
{{- define "tuneforge.rayImage" -}}
{{- $root := index . 0 }}
{{- $gpus := int (index . 1) }}
{{- $own := index . 2 }}
{{- $r := $root.Values.rayCluster.image }}
{{- $tag := default (default $root.Chart.AppVersion $root.Values.image.tag) $r.tag }}
{{- if and $own $own.repository }}
{{- printf "%s:%s" $own.repository (default $tag $own.tag) }}
{{- else if $r.repository }}
{{- printf "%s%s:%s" $r.repository (ternary "-cuda" "" (gt $gpus 0)) $tag }}
{{- else }}
{{- include "tuneforge.roleImage" (list $root (ternary "ml-cuda" "ml" (gt $gpus 0))) }}
{{- end }}
{{- end }}

{{/*
Resource presets (README table). (list root preset resources): resources when not empty, else the
preset's requests/limits; "none" renders {}.
*/}}
{{- define "tuneforge.resources" -}}
{{- $root := index . 0 }}
{{- $preset := default $root.Values.resourcesPreset (index . 1) }}
{{- $own := index . 2 }}
{{- $presets := dict
  "nano" (dict "requests" (dict "cpu" "100m" "memory" "256Mi") "limits" (dict "memory" "512Mi"))
  "small" (dict "requests" (dict "cpu" "250m" "memory" "512Mi") "limits" (dict "memory" "2Gi"))
  "medium" (dict "requests" (dict "cpu" "500m" "memory" "2Gi") "limits" (dict "memory" "6Gi"))
  "large" (dict "requests" (dict "cpu" "2" "memory" "8Gi") "limits" (dict "memory" "16Gi"))
  "xlarge" (dict "requests" (dict "cpu" "4" "memory" "16Gi") "limits" (dict "memory" "32Gi"))
  "none" (dict) }}
{{- if $own }}
{{- toYaml $own }}
{{- else }}
{{- toYaml (index $presets $preset) }}
{{- end }}
{{- end }}

{{/* Ray Train's run state (TUNEFORGE_RAY_STORAGE_PATH): a prefix of the object store, which every
Ray pod reaches with the credentials it already mounts; no shared volume. */}}
{{- define "tuneforge.rayStorageUri" -}}
{{- $uri := include "tuneforge.objectStoreUri" . }}
{{- $parts := splitn "?" 2 $uri }}
{{- printf "%s/%s?%s" (trimSuffix "/" $parts._0) .Values.rayCluster.storagePrefix $parts._1 }}
{{- end }}

{{- define "tuneforge.rayHeadAddress" -}}
{{- printf "ray://%s-ray-head-svc.%s.svc:10001" (include "tuneforge.fullname" .) .Release.Namespace }}
{{- end }}

{{/* Pod-level settings shared by the Ray head and worker pods. */}}
{{- define "tuneforge.rayPodCommon" -}}
serviceAccountName: {{ include "tuneforge.serviceAccountName" . }}
automountServiceAccountToken: false
{{ include "tuneforge.rayPodRest" . }}
{{- end }}
{{- define "tuneforge.rayPodRest" -}}
enableServiceLinks: false
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}
{{- define "tuneforge.rayEnv" -}}
- {name: RAY_AUTH_MODE, value: token}
- {name: RAY_AUTH_TOKEN_PATH, value: {{ include "tuneforge.secretsDir" . }}/ray/token}
- {name: RAY_USAGE_STATS_ENABLED, value: "0"}
- {name: HOME, value: /tmp}
{{- /* Training workers write checkpoints to the object store themselves: the same credentials
as the services, as files (Ray workers do not inherit the driver's environment, and secrets are
never passed through Ray's runtime_env, which the dashboard shows). */}}
- {name: TUNEFORGE_S3_ACCESS_KEY_FILE, value: {{ include "tuneforge.secretsDir" . }}/s3/access-key}
- {name: TUNEFORGE_S3_SECRET_KEY_FILE, value: {{ include "tuneforge.secretsDir" . }}/s3/secret-key}
{{- end }}

{{/* The object-store credentials volume (mounted at <secretsDir>/s3). */}}
{{- define "tuneforge.s3Volume" -}}
- name: s3
  secret:
    secretName: {{ include "tuneforge.s3SecretName" . }}
    defaultMode: 0440
    items:
      - {key: {{ include "tuneforge.s3AccessKeyKey" . }}, path: access-key}
      - {key: {{ include "tuneforge.s3SecretKeyKey" . }}, path: secret-key}
{{- end }}

{{/* Base models: TUNEFORGE_MODELS_DIR, one volume mounted read-only by every service. */}}
{{- define "tuneforge.modelsDir" -}}/models{{- end }}
{{- define "tuneforge.modelsClaimName" -}}
{{- if .Values.models.existingClaim }}
{{- .Values.models.existingClaim }}
{{- else if .Values.models.persistence.enabled }}
{{- printf "%s-models" (include "tuneforge.fullname" .) }}
{{- end }}
{{- end }}
{{- define "tuneforge.modelsVolume" -}}
- name: models
  {{- with include "tuneforge.modelsClaimName" . }}
  persistentVolumeClaim: {claimName: {{ . }}, readOnly: true}
  {{- else }}
  emptyDir: {sizeLimit: {{ .Values.models.emptyDirSizeLimit }}}
  {{- end }}
{{- end }}

{{/*
In-cluster address (Service DNS name:port) of each enabled service, as the TUNEFORGE_<SVC>_ADDRESS
settings every service reads: evaluation calls datasets and checkpoints on the caller's behalf.
*/}}
{{- define "tuneforge.peerAddresses" -}}
{{- range $svc := splitList " " (include "tuneforge.serviceNames" $) }}
{{- if (index $.Values.services $svc).enabled }}
TUNEFORGE_{{ upper $svc }}_ADDRESS: {{ printf "%s-%s.%s.svc:%d" (include "tuneforge.fullname" $) $svc $.Release.Namespace (int $.Values.service.port) | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/* "true" when (list root svc) submits work to the RayCluster: training always, evaluation when asked. */}}
{{- define "tuneforge.usesRay" -}}
{{- $root := index . 0 }}
{{- $svc := index . 1 }}
{{- if $root.Values.rayCluster.enabled }}
{{- if or (eq $svc "training") (and (eq $svc "evaluation") $root.Values.services.evaluation.useRayCluster) (and (eq $svc "checkpoints") $root.Values.services.checkpoints.useRayCluster) }}true{{ end }}
{{- end }}
{{- end }}

{{/*
What admission checks jobs against (TUNEFORGE_TRAIN_GPUS, _GPU_MEMORY_GIB, _CPU_WORKERS), from the
RayCluster's worker groups at their largest: GPUs of the GPU groups (maxReplicas x gpusPerWorker),
the smallest gpuMemoryGiB they declare, Ray workers of the CPU groups. Nothing without a RayCluster
(jobs train in the pod: not checked).
*/}}
{{- define "tuneforge.trainingCapacityEnv" -}}
{{- if .Values.rayCluster.enabled }}
{{- $gpus := 0 }}{{- $cpuWorkers := 0 }}{{- $memory := 0.0 }}
{{- range .Values.rayCluster.workerGroups }}
{{- $n := int (default .replicas .maxReplicas) }}
{{- if gt (int (default 0 .gpusPerWorker)) 0 }}
{{- $gpus = add $gpus (mul $n (int .gpusPerWorker)) }}
{{- $m := float64 (default 0 .gpuMemoryGiB) }}
{{- if and (gt $m 0.0) (or (eq $memory 0.0) (lt $m $memory)) }}{{- $memory = $m }}{{- end }}
{{- else }}
{{- $cpuWorkers = add $cpuWorkers $n }}
{{- end }}
{{- end }}
- name: TUNEFORGE_TRAIN_GPUS
  value: {{ $gpus | quote }}
{{- if gt $memory 0.0 }}
- name: TUNEFORGE_TRAIN_GPU_MEMORY_GIB
  value: {{ $memory | quote }}
{{- end }}
{{- if eq $gpus 0 }}
- name: TUNEFORGE_TRAIN_CPU_WORKERS
  value: {{ $cpuWorkers | quote }}
{{- end }}
{{- end }}
{{- end }}
{{/* The overload gate's image. */}}
{{- define "tuneforge.gateImage" -}}
{{- default (include "tuneforge.roleImage" (list . "gate")) .Values.gate.image }}
{{- end }}
{{/* A service's streaming methods (list root svc): the gate passes them straight through, never
     queued. The same lists as tuneforge.common.grpc.gate.streaming_methods over the service's
     descriptors (tests/unit/deploy/test_chart_gate.py checks they agree). */}}
{{- define "tuneforge.streamingMethods" -}}
{{- $svc := index . 1 }}
{{- $common := list "/grpc.health.v1.Health/Watch" "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo" }}
{{- $own := dict
  "datasets" (list "/tuneforge.datasets.v1.DatasetService/UploadDataset" "/tuneforge.datasets.v1.DatasetService/WatchCurationRun")
  "training" (list "/tuneforge.training.v1.TrainingService/DownloadJobMetrics" "/tuneforge.training.v1.TrainingService/StreamJobEvents")
  "evaluation" (list "/tuneforge.evaluation.v1.EvaluationService/StreamEvaluationProgress")
  "checkpoints" (list "/tuneforge.checkpoints.v1.CheckpointService/DownloadFile") }}
{{- concat $common (index $own $svc) | join "," }}
{{- end }}
