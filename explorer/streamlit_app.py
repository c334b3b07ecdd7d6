"""tlkit explorer: `streamlit run explorer [-- --runs-dir DIR]`.

A thin entry page: settings, the sidebar's queue status and navigation. The
pages live in `explorer/views/`, their logic in the modules beside this file.
"""

import sys
from pathlib import Path

# `streamlit run explorer` puts explorer/ (not the repo) on sys.path; tlkit may not be installed.
REPO_ROOT = str(Path(__file__).resolve().parent.parent)
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

import streamlit as st

from explorer import launcher, session, worker

st.set_page_config(page_title="tlkit explorer", page_icon="🧪", layout="wide")
runs_dir = session.runs_dir()

pages = st.navigation([
    st.Page("views/launch.py", title="Launch", icon="🚀", default=True),
    st.Page("views/runs.py", title="Runs", icon="📋"),
    st.Page("views/compare.py", title="Compare", icon="📈"),
])

with st.sidebar:
    st.markdown("### 🧪 tlkit explorer")
    st.caption(f"Runs directory: `{runs_dir.resolve()}`")
    st.number_input("Max concurrent runs", min_value=1, max_value=16, step=1, key="max_concurrent",
                    value=session.max_concurrent(), help="Queue workers allowed at once on this machine.")
    counts = launcher.queue_summary(runs_dir)
    workers = worker.active_workers(runs_dir) if runs_dir.is_dir() else []
    st.caption(f"Queue: {counts['queued']} queued · {counts['running']} running · "
               f"{'worker pid ' + ', '.join(map(str, workers)) if workers else 'no worker'}")
    if counts["queued"] and not workers and st.button("Start queue worker"):
        launcher.ensure_worker(runs_dir, st.session_state["max_concurrent"])
        st.rerun()

pages.run()
