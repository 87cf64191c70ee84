# Shared settings of scripts/cvat/*.sh (sourced).  Everything lives under $CVAT_CACHE; all ports are on 127.0.0.1.
CVAT_CACHE="$(mkdir -p "${CVAT_CACHE:-.cache/cvat}" && cd "${CVAT_CACHE:-.cache/cvat}" && pwd)"
CVAT_COMMIT="${CVAT_COMMIT:-ac6e63b96bddbc462a0a8c0acce307c4c0c6e972}"  # release-2.73.0
CVAT_GIT_DIR="${CVAT_GIT_DIR:-/work/.mirror/Christanding+cvat-yolo26-annotation-tool/repo}"
CVAT_SRC="$CVAT_CACHE/src"
CVAT_VENV="$CVAT_CACHE/venv"
# CVAT targets Python 3.12; 3.11 works too. (A pyenv shim may exist for a version it will not run: try each.)
if [ -z "${CVAT_PYTHON:-}" ]; then
  for CVAT_PYTHON in python3.12 python3.11 python3; do "$CVAT_PYTHON" -c '' 2>/dev/null && break; done
  CVAT_PYTHON="$("$CVAT_PYTHON" -c 'import sys; print(sys.executable)')"
fi
CVAT_PORT="${CVAT_PORT:-7000}"
CVAT_UI_PORT="${CVAT_UI_PORT:-3000}"
CVAT_PG_PORT="${CVAT_PG_PORT:-5433}"
CVAT_REDIS_INMEM_PORT="${CVAT_REDIS_INMEM_PORT:-6390}"
CVAT_REDIS_ONDISK_PORT="${CVAT_REDIS_ONDISK_PORT:-6391}"
CVAT_OPA_PORT="${CVAT_OPA_PORT:-8181}"
CVAT_ADMIN_USER="${CVAT_ADMIN_USER:-admin}"
CVAT_ADMIN_PASSWORD="${CVAT_ADMIN_PASSWORD:-adaptiveclick-admin}"
export CVAT_CACHE CVAT_COMMIT CVAT_GIT_DIR CVAT_SRC CVAT_VENV CVAT_PYTHON CVAT_PORT CVAT_UI_PORT CVAT_PG_PORT \
  CVAT_REDIS_INMEM_PORT CVAT_REDIS_ONDISK_PORT CVAT_OPA_PORT CVAT_ADMIN_USER CVAT_ADMIN_PASSWORD
# What CVAT's settings read (cvat/settings/base.py) and our settings module (adaptiveclick_cvat_settings.py).
export CVAT_BASE_DIR="$CVAT_SRC"
export DJANGO_SETTINGS_MODULE=adaptiveclick_cvat_settings
export PYTHONPATH="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd):$CVAT_SRC${PYTHONPATH:+:$PYTHONPATH}"
export CVAT_POSTGRES_HOST=127.0.0.1 CVAT_POSTGRES_PORT="$CVAT_PG_PORT" CVAT_POSTGRES_USER=cvat \
  CVAT_POSTGRES_DBNAME=cvat CVAT_POSTGRES_PASSWORD=cvat
export CVAT_REDIS_INMEM_HOST=127.0.0.1 CVAT_REDIS_INMEM_PORT CVAT_REDIS_ONDISK_HOST=127.0.0.1 \
  CVAT_REDIS_ONDISK_PORT
