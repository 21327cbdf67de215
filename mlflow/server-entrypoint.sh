#!/bin/sh
# Start the tracking server from environment variables alone (a Kubernetes Secret and ConfigMap set them).
#   mlflow-server              the server
#   mlflow-server db-upgrade   migrate the backend store to this MLflow version (back up the database first)
# Required:
#   MLFLOW_BACKEND_STORE_URI        postgresql+psycopg2://mlflow@HOST:5432/mlflow (no password: PGPASSWORD holds it)
#   MLFLOW_AUTH_DATABASE_URI        postgresql+psycopg2://mlflow@HOST:5432/mlflow_auth (users and permissions)
#   MLFLOW_ARTIFACTS_DESTINATION    s3://BUCKET/ (clients upload through the server and need no bucket credentials)
#   PGPASSWORD, MLFLOW_AUTH_ADMIN_PASSWORD (12+ characters), MLFLOW_FLASK_SERVER_SECRET_KEY,
#   AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY
# Optional: MLFLOW_S3_ENDPOINT_URL (MinIO or another S3-compatible store), MLFLOW_AUTH_ADMIN_USERNAME [admin],
#   MLFLOW_DEFAULT_PERMISSION [READ], MLFLOW_HOST [0.0.0.0], MLFLOW_PORT [5000], MLFLOW_WORKERS [2],
#   MLFLOW_AUTH_CACHE_TTL_SECONDS [0]: how long a worker trusts a checked login (each check is a deliberately slow
#     password hash; a changed or removed password still works on other workers for up to this long),
#   MLFLOW_ALLOWED_HOSTS (the host names clients use, e.g. mlflow.mlflow.svc.cluster.local,mlflow.example.com)
set -eu
need() { eval "[ -n \"\${$1:-}\" ]" || { echo "mlflow-server: set $1 ($2)" >&2; exit 2; }; }
need MLFLOW_BACKEND_STORE_URI "postgresql+psycopg2://mlflow@HOST:5432/mlflow"
case "${1:-}" in
  db-upgrade) exec mlflow db upgrade "$MLFLOW_BACKEND_STORE_URI" ;;
esac
need MLFLOW_AUTH_DATABASE_URI "postgresql+psycopg2://mlflow@HOST:5432/mlflow_auth"
need MLFLOW_ARTIFACTS_DESTINATION "s3://BUCKET/"
for v in PGPASSWORD MLFLOW_AUTH_ADMIN_PASSWORD MLFLOW_FLASK_SERVER_SECRET_KEY AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY; do
  need "$v" "from the server's Secret; mlflow/README.md"
done
# The auth app's settings; no password in it (the admin's comes from MLFLOW_AUTH_ADMIN_PASSWORD, the database's
# from PGPASSWORD).
export MLFLOW_AUTH_CONFIG_PATH="${MLFLOW_AUTH_CONFIG_PATH:-/tmp/basic_auth.ini}"
cat > "$MLFLOW_AUTH_CONFIG_PATH" <<INI
[mlflow]
default_permission = ${MLFLOW_DEFAULT_PERMISSION:-READ}
database_uri = ${MLFLOW_AUTH_DATABASE_URI}
admin_username = ${MLFLOW_AUTH_ADMIN_USERNAME:-admin}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
auth_cache_ttl_seconds = ${MLFLOW_AUTH_CACHE_TTL_SECONDS:-0}
INI
set -- --app-name basic-auth --host "${MLFLOW_HOST:-0.0.0.0}" --port "${MLFLOW_PORT:-5000}" \
  --workers "${MLFLOW_WORKERS:-2}" --serve-artifacts --artifacts-destination "$MLFLOW_ARTIFACTS_DESTINATION" "$@"
[ -n "${MLFLOW_ALLOWED_HOSTS:-}" ] && set -- "$@" --allowed-hosts "$MLFLOW_ALLOWED_HOSTS"
exec mlflow server "$@"
