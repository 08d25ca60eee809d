#!/bin/sh
# A KRM function in a few lines of shell. fermata passes the composition's
# synthesisEnv both as the ResourceList's functionConfig (a ConfigMap) and as
# environment variables, so a script can simply use $ENDPOINT and $INTERVAL
# (and the site's values: $COLLECTOR_VERSION, which campaigns roll out).
set -eu
cat >/dev/null
cat <<YAML
apiVersion: config.kubernetes.io/v1
kind: ResourceList
items:
  - apiVersion: v1
    kind: ConfigMap
    metadata: {name: collector, namespace: telemetry}
    data:
      endpoint: "${ENDPOINT}"
      interval: "${INTERVAL}"
      site: "${FERMATA_COMPOSITION}"
  - apiVersion: apps/v1
    kind: DaemonSet
    metadata: {name: collector, namespace: telemetry}
    spec:
      selector: {matchLabels: {app: collector}}
      template:
        metadata: {labels: {app: collector}}
        spec:
          containers:
            - {name: collector, image: "otel/opentelemetry-collector:${COLLECTOR_VERSION}"}
YAML
