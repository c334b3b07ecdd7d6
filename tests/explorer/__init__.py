"""Tests of the Streamlit explorer (`explorer/`): logic, queue worker, AppTest pages, browser."""
