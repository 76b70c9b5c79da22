"""`refine export-dataset`: a labelled face dataset of new identities, refined by a checkpoint's G
(``refine.export.exporter``: what is written, and how a killed export resumes)."""
from __future__ import annotations

from refine.export.exporter import Exporter
from refine.export.options import ExportOptions


def export_dataset(options: ExportOptions, progress: bool = True, stats: dict | None = None) -> dict:
    """Run (or resume) an export; returns its manifest. See ``refine.export.exporter``."""
    return Exporter(options, stats=stats, progress=progress).run()
