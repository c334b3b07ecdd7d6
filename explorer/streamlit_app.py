"""tlkit explorer: `streamlit run explorer [-- --runs-dir DIR]`.

A thin entry page: settings, the sidebar's live strip (queue, running and
finished runs, on every page) and navigation. The
pages live in `explorer/views/`, their logic in the modules beside this file.
"""

import streamlit as st

from explorer import session, ui  # the `explorer` package: installed with `pip install -e ".[explorer]"`

st.set_page_config(page_title="tlkit explorer", page_icon=":material/science:", layout="wide")
runs_dir = session.runs_dir()

pages = st.navigation([
    st.Page("views/launch.py", title="Launch", icon=":material/rocket_launch:", default=True),
    st.Page("views/runs.py", title="Runs", icon=":material/table_rows:"),
    st.Page("views/compare.py", title="Compare", icon=":material/monitoring:"),
    st.Page("views/sweeps.py", title="Sweeps", icon=":material/tune:"),
])

with st.sidebar:
    st.markdown("### :material/science: tlkit explorer")
    st.caption(f"Runs directory: `{runs_dir.resolve()}`")
    st.number_input("Max concurrent runs", min_value=1, max_value=16, step=1, key="max_concurrent",
                    value=session.max_concurrent(), help="Queue workers allowed at once on this machine.")
    ui.live_strip(runs_dir)

pages.run()
