"""tlkit explorer: a Streamlit app to design, launch, watch and compare tlkit runs.

Start it with `streamlit run explorer [-- --runs-dir DIR]`. Pages are in
`explorer/views/`; everything they compute (widgets from the config's field
specs, the run queue, tables and plotly figures) lives in plain modules here so
it can be tested without Streamlit.
"""
