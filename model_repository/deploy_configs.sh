#!/bin/sh
# Adapts a copy of face_detector/ for the Triton image (model_repository/Dockerfile runs this at build time):
#   deploy_configs.sh MODEL_DIR CPU_THREADS
# 1. config.pbtxt (KIND_CPU) gets NUM_THREADS=CPU_THREADS: in a container, model.py's default (the cores
#    the process may run on) is the whole node, while the CPU limit is a quota; more torch threads than
#    the quota allows only adds contention.
# 2. configs/gpu.pbtxt: the same configuration with KIND_GPU, which Triton loads instead of config.pbtxt
#    when started with --model-config-name=gpu (docker-compose.gpu.yml, k8s/overlays/gpu).
# Fails, rather than writing a wrong configuration, if config.pbtxt no longer looks as expected.
set -eu
model_dir=$1
cpu_threads=$2
config="$model_dir/config.pbtxt"

case $cpu_threads in
  '' | *[!0-9]* | 0) echo "deploy_configs.sh: CPU_THREADS must be a positive integer, got '$cpu_threads'" >&2; exit 1 ;;
esac
settings=$(grep -v '^[[:space:]]*#' "$config")  # comments may mention either kind
if [ "$(printf '%s\n' "$settings" | grep -c 'kind: KIND_CPU')" != 1 ] || printf '%s\n' "$settings" | grep -q 'KIND_GPU'; then
  echo "deploy_configs.sh: $config must have exactly one 'kind: KIND_CPU' instance group and no KIND_GPU" >&2
  exit 1
fi
if printf '%s\n' "$settings" | grep -q 'key: "NUM_THREADS"'; then
  echo "deploy_configs.sh: $config already sets NUM_THREADS; remove it there or drop step 1 here" >&2
  exit 1
fi

cat >> "$config" <<PBTXT

# Added by model_repository/deploy_configs.sh for the container: its CPU limit.
parameters {
  key: "NUM_THREADS"
  value { string_value: "$cpu_threads" }
}
PBTXT

mkdir -p "$model_dir/configs"
sed '/^[[:space:]]*#/!s/kind: KIND_CPU/kind: KIND_GPU/' "$config" > "$model_dir/configs/gpu.pbtxt"
