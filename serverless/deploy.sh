#!/usr/bin/env bash
# Deploy the AdaptiveClick interactor to CVAT's nuclio, as CVAT's serverless/deploy_cpu.sh / deploy_gpu.sh do for
# their functions: build the project's image, then `nuctl deploy` the function into CVAT's project and network.
#
#   serverless/deploy.sh          # CPU  (function.yaml)
#   serverless/deploy.sh gpu      # NVIDIA GPU (function-gpu.yaml)
#
# Environment (all optional):
#   MODEL_DIR_HOST=/srv/adaptiveclick-models   a host folder mounted at /data/models as MODEL_DIR: the versions
#                                            Label Studio fine-tuning promotes there are served to CVAT too
#   MODEL_CHECKPOINT=/data/models/x.pth      weights to serve instead of the starter (a path inside the container)
#   SESSION_STORE=redis://host:6379/0        share click states with other workers / replicas / the LS backend
#   CVAT_NETWORK=cvat_cvat                   the docker network of CVAT's compose project
#   IMAGE=adaptiveclick:latest               the image the function is built on (built here unless SKIP_BUILD=1)
#   BUILD_ARGS="--build-arg ..."             extra `docker build` options, e.g. the Dockerfile's CPU variant:
#                                            "--build-arg BASE_IMAGE=debian:sid-slim --build-arg TORCH_FROM=debian"
set -euo pipefail
cd "$(dirname "$0")/.."

kind="${1:-cpu}"
case "$kind" in
  cpu) yaml=function.yaml ;;
  gpu) yaml=function-gpu.yaml ;;
  *) echo "usage: $0 [cpu|gpu]" >&2; exit 2 ;;
esac
func_root=serverless/adaptiveclick/nuclio
image="${IMAGE:-adaptiveclick:latest}"
network="${CVAT_NETWORK:-cvat_cvat}"

command -v nuctl >/dev/null || { echo "nuctl is not on PATH: install the nuclio CLI version CVAT's docs name" >&2; exit 1; }
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  # No DOCKER_BUILDKIT=1: a docker CLI without the buildx plugin refuses to build at all with it; docker picks
  # BuildKit by itself where buildx is installed.
  # shellcheck disable=SC2086  # BUILD_ARGS is a list of options
  docker build ${BUILD_ARGS:-} -t "$image" .
fi

args=(--project-name cvat --path "$func_root" --file "$func_root/$yaml" --platform local
      --base-image "$image"
      --platform-config "{\"attributes\": {\"network\": \"$network\"}}")
[ -n "${MODEL_DIR_HOST:-}" ] && args+=(--volume "$MODEL_DIR_HOST:/data/models" --env MODEL_DIR=/data/models)
[ -n "${MODEL_CHECKPOINT:-}" ] && args+=(--env "MODEL_CHECKPOINT=$MODEL_CHECKPOINT")
[ -n "${SESSION_STORE:-}" ] && args+=(--env "SESSION_STORE=$SESSION_STORE")

nuctl create project cvat --platform local >/dev/null 2>&1 || true   # exists already after CVAT's own deploys
echo "Deploying pth-adaptiveclick ($kind) on $image ..."
nuctl deploy "${args[@]}"
nuctl get function --platform local
