#!/bin/bash
# Entry point of the Spark image's pods (docker/Dockerfile.spark). Spark's Kubernetes backend starts the driver pod
# as `<entrypoint> driver <spark-submit arguments>` and each executor pod as `<entrypoint> executor`, with the
# executor's settings in SPARK_* environment variables; anything else runs as given. Spark here is pyspark's own
# distribution (SPARK_HOME inside the venv), so this replaces the entry script of Spark's official images.
set -euo pipefail

SPARK_HOME="${SPARK_HOME:-$(python -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))')}"
export SPARK_HOME

case "${1:-}" in
  driver)
    shift
    # Listen on the pod's IP (the backend sets SPARK_DRIVER_BIND_ADDRESS); the backend's properties file holds the rest.
    exec "$SPARK_HOME/bin/spark-submit" --deploy-mode client \
      --conf "spark.driver.bindAddress=${SPARK_DRIVER_BIND_ADDRESS:-127.0.0.1}" "$@"
    ;;
  executor)
    shift
    # SPARK_JAVA_OPT_0, _1, ... carry the executor's JVM options, in order.
    java_opts=()
    while IFS= read -r name; do
      java_opts+=("${!name}")
    done < <(compgen -e | grep -E '^SPARK_JAVA_OPT_[0-9]+$' | sort -t_ -k4 -n || true)
    : "${SPARK_DRIVER_URL:?not set: executor pods get it from the Kubernetes backend of the Spark driver}"
    exec "${JAVA_HOME:-/opt/java}/bin/java" "${java_opts[@]}" \
      -Xms"${SPARK_EXECUTOR_MEMORY}" -Xmx"${SPARK_EXECUTOR_MEMORY}" \
      -cp "${SPARK_CONF_DIR:-/opt/spark/conf}:$SPARK_HOME/jars/*" \
      org.apache.spark.scheduler.cluster.k8s.KubernetesExecutorBackend \
      --driver-url "$SPARK_DRIVER_URL" --executor-id "$SPARK_EXECUTOR_ID" --cores "$SPARK_EXECUTOR_CORES" \
      --app-id "$SPARK_APPLICATION_ID" --hostname "$SPARK_EXECUTOR_POD_IP" \
      --resourceProfileId "${SPARK_RESOURCE_PROFILE_ID:-0}" --podName "${SPARK_EXECUTOR_POD_NAME:-}" "$@"
    ;;
  *)
    exec "$@"
    ;;
esac
