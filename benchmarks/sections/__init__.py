"""The benchmark sections, one module each; `SECTIONS` lists them in report order (name → `Section`).

Importing this package does not import Keras: the case functions of a section import it when the child calls
them (see `benchmarks.child`).
"""

from __future__ import annotations

from benchmarks.sections import backends, boundary_cache, cache_feeding, compile_cache, decode, feature_cache, pipeline
from benchmarks.sections.base import Case, Section, SummaryRow, parse_backend

SECTIONS = {module.SECTION.name: module.SECTION
            for module in (pipeline, feature_cache, boundary_cache, backends, cache_feeding, decode, compile_cache)}

__all__ = ["SECTIONS", "Case", "Section", "SummaryRow", "parse_backend"]
