#!/bin/sh
# Adapts a copy of face_detector/ for the Triton image (model_repository/Dockerfile runs this at build time):
#   deploy_configs.sh MODEL_DIR CPU_THREADS
# 1. config.pbtxt (KIND_CPU) gets NUM_THREADS = CPU_THREADS / instance count: in a container, model.py's
#    default would follow the whole node, while the CPU limit is a quota; more torch threads than the
#    quota allows only adds contention. The committed value (1, for `make run` on 2 cores) is replaced.
# 2. configs/gpu.pbtxt: the same configuration with KIND_GPU and count 1, which Triton loads instead of
#    config.pbtxt when started with --model-config-name=gpu (docker-compose.gpu.yml, k8s/overlays/gpu). On a
#    GPU, count is per GPU: one instance keeps the GPU busy (dynamic batching fills it), where the CPU's
#    several single-threaded instances would each hold another copy of the network and a CUDA context.
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
if [ "$(printf '%s\n' "$settings" | grep -c 'key: "NUM_THREADS"')" != 1 ]; then
  echo "deploy_configs.sh: $config must set the NUM_THREADS parameter exactly once" >&2
  exit 1
fi
instances=$(printf '%s\n' "$settings" | sed -n 's/^[[:space:]]*count:[[:space:]]*\([0-9][0-9]*\).*/\1/p')
case $instances in
  '' | *[!0-9]* | 0) echo "deploy_configs.sh: $config must give the instance group one positive 'count'" >&2; exit 1 ;;
esac
threads=$((cpu_threads / instances))
[ "$threads" -ge 1 ] || threads=1

# The string_value on the line after key: "NUM_THREADS" (config.pbtxt's layout) becomes the container's.
awk -v threads="$threads" '
  /^[[:space:]]*#/ { print; next }
  /key: "NUM_THREADS"/ { print; replace = 1; next }
  replace && /string_value:/ { sub(/string_value: "[^"]*"/, "string_value: \"" threads "\""); replace = 0 }
  { print }
' "$config" > "$config.tmp" && mv "$config.tmp" "$config"

mkdir -p "$model_dir/configs"
sed -e '/^[[:space:]]*#/!s/kind: KIND_CPU/kind: KIND_GPU/' \
    -e '/^[[:space:]]*#/!s/^\([[:space:]]*count:[[:space:]]*\)[0-9][0-9]*/\11/' \
    "$config" > "$model_dir/configs/gpu.pbtxt"
