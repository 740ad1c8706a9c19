#!/bin/sh
# Prepares MinIO for the gateway, as MinIO's root user, once per deployment (compose service minio-init,
# k8s Job minio-init): the media bucket, a policy that allows only that bucket (policy.json beside this
# script, @BUCKET@ replaced), and the user the gateway and its worker run as, with the policy attached.
# The gateway itself never sees the root credentials and cannot create, list or touch any other bucket.
# Safe to run again: each step is create-or-update.
set -eu

fail() {
    echo "minio-init: $*" >&2
    exit 1
}

require() {
    # $1: the variable's name, $2: its value. Empty values and the templates' REPLACE_ME placeholders stop here.
    case "$2" in
        "") fail "$1 is not set" ;;
        REPLACE_ME* | replace_me*) fail "$1 still holds the template's REPLACE_ME placeholder: set the real value" ;;
    esac
}

require MINIO_ROOT_USER "${MINIO_ROOT_USER:-}"
require MINIO_ROOT_PASSWORD "${MINIO_ROOT_PASSWORD:-}"
require MINIO_ACCESS_KEY "${MINIO_ACCESS_KEY:-}"
require MINIO_SECRET_KEY "${MINIO_SECRET_KEY:-}"
require MINIO_BUCKET "${MINIO_BUCKET:-}"
require MINIO_URL "${MINIO_URL:-}"
[ "$MINIO_ACCESS_KEY" != "$MINIO_ROOT_USER" ] ||
    fail "MINIO_ACCESS_KEY must name a user of its own, not MinIO's root user (MINIO_ROOT_USER)"

here=$(dirname "$0")
work=${MC_CONFIG_DIR:?set MC_CONFIG_DIR to a writable directory}
policy="mediabot-$MINIO_BUCKET"

mc alias set root "$MINIO_URL" "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" >/dev/null
mc mb --ignore-existing "root/$MINIO_BUCKET"
sed "s/@BUCKET@/$MINIO_BUCKET/g" "$here/policy.json" >"$work/policy.json"
mc admin policy create root "$policy" "$work/policy.json"
mc admin user add root "$MINIO_ACCESS_KEY" "$MINIO_SECRET_KEY"
if ! mc admin policy attach root "$policy" --user "$MINIO_ACCESS_KEY"; then
    # A rerun: MinIO refuses to attach a policy that is already attached. Anything else is a real failure.
    mc admin user info root "$MINIO_ACCESS_KEY" --json | grep -Eq "\"policyName\": ?\"([^\"]*,)?$policy(,|\")" ||
        fail "could not attach policy $policy to user $MINIO_ACCESS_KEY"
fi
echo "minio-init: bucket $MINIO_BUCKET, policy $policy and user $MINIO_ACCESS_KEY are ready"
