"""Gold reports: SQL files with a YAML header, run with DuckDB over the lake, written to `gold.<name>`."""

from medlake_assets.gold.spec import ReportSpec, ReportSpecError, load_report, load_reports

__all__ = ["ReportSpec", "ReportSpecError", "load_report", "load_reports"]
