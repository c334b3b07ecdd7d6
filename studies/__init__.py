"""This project's own studies: each one generates a page of `docs/` from run directories.

A study (for example `studies.results`, the accuracy report `docs/results.md`) reads the
run directories named in a spec, builds its tables and plots with the general helpers of
`tlkit.report`, and fills a markdown template; it is run as a command
(`python -m studies.results docs/results.toml`). Studies depend on the library, and the
library never imports them, so they are not part of the installed `tlkit` package.
"""
