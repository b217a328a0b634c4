#!/usr/bin/env bash
# Set up (first run only) and start the app: `bash run.sh` (extra arguments go to `streamlit run`,
# e.g. `bash run.sh --server.port 8502`; a class server: `NULLVIZ_SHARED=1 bash run.sh --server.address 0.0.0.0`).
set -euo pipefail
cd "$(dirname "$0")"
. scripts/venv.sh
ensure_venv requirements.txt
exec .venv/bin/python -m streamlit run server.py "$@"  # app.py, served (server.py says why)
