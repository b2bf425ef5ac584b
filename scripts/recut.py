"""Re-cut the package along the data flow (issue 12): `git mv` every module to its new home and rewrite
`medlake_assets.<old.dotted>` names and `medlake_assets/<old/path>` mentions to the new ones.

A ONE-OFF MIGRATION AID: once every branch started before the re-cut has been merged, delete this file.

Re-runnable. A move whose source is gone is skipped; the rewrites only match old names, so a second run
changes nothing. After main gains files or imports in the old places (a branch merged that was started
before the re-cut), run it again from the repository root on a clean tree:

    .venv/bin/python scripts/recut.py            # moves + rewrites, then lists what it could not place
    .venv/bin/python scripts/recut.py --dry-run  # only print what it would do

A file new in a folder that is split up (`tables/`, `transforms/`) has no row yet: the run lists it and
exits 1; add a row to MOVES and run again. Folders moved whole (`quality/`, `reports/`, `generate/`,
`bench/`) take their new files with them.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# old path -> new path, files or whole folders, relative to the repository root. Order matters only for
# folders that receive files (a folder's move runs before files are moved into it).
MOVES: list[tuple[str, str]] = [
    # lake/: the kernel at the bottom (settings, the Lake handle, object store, catalog, commits, ledger).
    ("medlake_assets/lake.py", "medlake_assets/lake/__init__.py"),
    ("medlake_assets/config.py", "medlake_assets/lake/settings.py"),
    ("medlake_assets/ingest/objectstore.py", "medlake_assets/lake/objectstore.py"),
    ("medlake_assets/tables/catalog.py", "medlake_assets/lake/catalog.py"),
    ("medlake_assets/tables/commits.py", "medlake_assets/lake/commits.py"),
    ("medlake_assets/tables/ledger.py", "medlake_assets/lake/ledger.py"),
    ("medlake_assets/tables/maintenance.py", "medlake_assets/lake/maintenance.py"),
    ("medlake_assets/tables/docs.py", "medlake_assets/lake/docs.py"),
    ("medlake_assets/tables/files.py", "medlake_assets/lake/files.py"),
    # ingest/ owns bronze writes.
    ("medlake_assets/tables/bronze.py", "medlake_assets/ingest/bronze.py"),
    # silver/: typing, cleaning, quality, silver tables and merges.
    ("medlake_assets/transforms/__init__.py", "medlake_assets/silver/transforms.py"),
    ("medlake_assets/transforms/casts.py", "medlake_assets/silver/casts.py"),
    ("medlake_assets/transforms/cleaning.py", "medlake_assets/silver/cleaning.py"),
    ("medlake_assets/transforms/typed.py", "medlake_assets/silver/typed.py"),
    ("medlake_assets/quality", "medlake_assets/silver/quality"),
    ("medlake_assets/tables/silver.py", "medlake_assets/silver/tables.py"),
    ("medlake_assets/tables/merge.py", "medlake_assets/silver/merge.py"),
    # gold/.
    ("medlake_assets/reports", "medlake_assets/gold"),
    # defs/ named by layer.
    ("medlake_assets/defs/sources.py", "medlake_assets/defs/bronze.py"),
    ("medlake_assets/defs/reports.py", "medlake_assets/defs/gold.py"),
    # Dev tooling: a sibling package in the same distribution.
    ("medlake_assets/generate", "medlake_dev/generate"),
    ("medlake_assets/bench", "medlake_dev/bench"),
    ("medlake_assets/workers.py", "medlake_dev/workers.py"),
    ("medlake_assets/demo.py", "medlake_dev/demo.py"),
    # Tests mirror the code (dev tooling's tests stay under testpaths, in dev/).
    ("medlake_assets_tests/tables/__init__.py", "medlake_assets_tests/lake/__init__.py"),
    ("medlake_assets_tests/test_config.py", "medlake_assets_tests/lake/test_settings.py"),
    ("medlake_assets_tests/ingest/test_objectstore.py", "medlake_assets_tests/lake/test_objectstore.py"),
    (
        "medlake_assets_tests/tables/test_concurrent_commits.py",
        "medlake_assets_tests/lake/test_concurrent_commits.py",
    ),
    ("medlake_assets_tests/tables/test_ensure.py", "medlake_assets_tests/lake/test_ensure.py"),
    ("medlake_assets_tests/tables/test_ledger.py", "medlake_assets_tests/lake/test_ledger.py"),
    ("medlake_assets_tests/tables/test_maintenance.py", "medlake_assets_tests/lake/test_maintenance.py"),
    ("medlake_assets_tests/tables/test_merge.py", "medlake_assets_tests/silver/test_merge.py"),
    (
        "medlake_assets_tests/tables/test_merge_properties.py",
        "medlake_assets_tests/silver/test_merge_properties.py",
    ),
    ("medlake_assets_tests/transforms/test_casts.py", "medlake_assets_tests/silver/test_casts.py"),
    ("medlake_assets_tests/transforms/test_cleaning.py", "medlake_assets_tests/silver/test_cleaning.py"),
    ("medlake_assets_tests/transforms/test_typed.py", "medlake_assets_tests/silver/test_typed.py"),
    ("medlake_assets_tests/quality", "medlake_assets_tests/silver/quality"),
    ("medlake_assets_tests/reports", "medlake_assets_tests/gold"),
    ("medlake_assets_tests/generate", "medlake_assets_tests/dev/generate"),
    ("medlake_assets_tests/bench", "medlake_assets_tests/dev/bench"),
    ("medlake_assets_tests/test_workers.py", "medlake_assets_tests/dev/test_workers.py"),
    ("medlake_assets_tests/test_demo.py", "medlake_assets_tests/dev/test_demo.py"),
]

# Emptied package markers of dissolved folders (their one-line docstrings move to the new folders').
REMOVE = ["medlake_assets/tables/__init__.py", "medlake_assets_tests/transforms/__init__.py"]

# Package markers the new folders need.
DEV_DOCSTRING = "Dev tooling, not deployed: synthetic feeds, the demo, local workers, benchmarks."
CREATE = {
    "medlake_dev/__init__.py": f'"""{DEV_DOCSTRING}"""\n',
    "medlake_assets_tests/dev/__init__.py": "",
}

# Folders that are split up: any file left in them after the moves has no row in MOVES yet.
DISSOLVED = [
    "medlake_assets/tables",
    "medlake_assets/transforms",
    "medlake_assets_tests/tables",
    "medlake_assets_tests/transforms",
]

# Lines that locate files relative to `__file__` or name a moved file's path in pieces: (file, old, new).
LINE_FIXES = [
    (
        "medlake_assets/lake/settings.py",
        "PACKAGE_ROOT = Path(__file__).resolve().parent\n",
        "PACKAGE_ROOT = Path(__file__).resolve().parent.parent\n",
    ),
    (
        "medlake_assets_tests/dev/test_demo.py",
        "ROOT = Path(__file__).resolve().parent.parent\n",
        "ROOT = Path(__file__).resolve().parents[2]\n",
    ),
    (
        "medlake_assets_tests/deploy/test_dockerfile.py",
        '(REPO_ROOT / "medlake_assets" / "config.py")',
        '(REPO_ROOT / "medlake_assets" / "lake" / "settings.py")',
    ),
    ("pyproject.toml", 'include = ["medlake_assets*"]\n', 'include = ["medlake_assets*", "medlake_dev*"]\n'),
]

REWRITTEN_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".toml", ".cfg", ".ini", ".txt"}
REWRITTEN_NAMES = {"Makefile", "Dockerfile", ".dockerignore"}


def module_name(path: str) -> str:
    """`medlake_assets/tables/merge.py` -> `medlake_assets.tables.merge`; `x/__init__.py` -> `x`."""
    dotted = path.removesuffix(".py").replace("/", ".")
    return dotted.removesuffix(".__init__")


def renames() -> tuple[dict[str, str], dict[str, str]]:
    """The dotted and the slashed renames MOVES implies (a folder's rename covers what is inside it)."""
    dotted, slashed = {}, {}
    for old, new in MOVES:
        if module_name(old) != module_name(new):
            dotted[module_name(old)] = module_name(new)
        slashed[old] = new
    return dotted, slashed


def rename_pattern(names: dict[str, str], separator: str) -> re.Pattern[str]:
    """Longest name first, so a module's own row wins over its folder's; whole names only."""
    alternatives = "|".join(re.escape(name) for name in sorted(names, key=len, reverse=True))
    return re.compile(rf"(?<![\w{re.escape(separator)}])({alternatives})(?![\w])")


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True, text=True).stdout


def tracked(path: str) -> bool:
    return bool(git("ls-files", "--", path).strip())


def move(dry_run: bool) -> None:
    for old, new in MOVES:
        if not (ROOT / old).exists():
            continue
        target = ROOT / new
        if target.exists() and target.is_dir() and (ROOT / old).is_dir():
            # The folder moved before and main added files to the old one: move those files in.
            for child in sorted(
                p for p in (ROOT / old).rglob("*") if p.is_file() and tracked(str(p.relative_to(ROOT)))
            ):
                relative = child.relative_to(ROOT / old)
                print(f"git mv {child.relative_to(ROOT)} {new}/{relative}")
                if not dry_run:
                    (target / relative).parent.mkdir(parents=True, exist_ok=True)
                    git("mv", str(child.relative_to(ROOT)), f"{new}/{relative}")
            continue
        print(f"git mv {old} {new}")
        if not dry_run:
            target.parent.mkdir(parents=True, exist_ok=True)
            git("mv", old, new)
    for path in REMOVE:
        if (ROOT / path).exists():
            print(f"git rm {path}")
            if not dry_run:
                git("rm", "-q", path)
    for path, text in CREATE.items():
        if not (ROOT / path).exists():
            print(f"create {path}")
            if not dry_run:
                (ROOT / path).parent.mkdir(parents=True, exist_ok=True)
                (ROOT / path).write_text(text)
                git("add", path)


def rewrite(dry_run: bool) -> None:
    dotted, slashed = renames()
    patterns = [(rename_pattern(dotted, "."), dotted), (rename_pattern(slashed, "/"), slashed)]
    this_file = Path(__file__).resolve()
    for name in git("ls-files").splitlines():
        path = ROOT / name
        if path.resolve() == this_file or not path.is_file():
            continue
        if path.suffix not in REWRITTEN_SUFFIXES and path.name not in REWRITTEN_NAMES:
            continue
        text = path.read_text()
        new_text = text
        for pattern, table in patterns:
            new_text = pattern.sub(lambda match, table=table: table[match.group(1)], new_text)
        for fixed, old, new in LINE_FIXES:
            if name == fixed:
                new_text = new_text.replace(old, new)
        if new_text != text:
            print(f"rewrite {name}")
            if not dry_run:
                path.write_text(new_text)


def leftovers() -> list[str]:
    """Files in split-up folders without a row, and names of the dissolved folders still mentioned."""
    found = [
        f"no row in MOVES for {name}"
        for folder in DISSOLVED
        for name in git("ls-files", "--", folder).splitlines()
        if name not in REMOVE
    ]
    # git grep exits 1 when nothing matches, which is the good case.
    mentions = subprocess.run(
        ["git", "grep", "-nE", r"medlake_assets[./](tables|transforms)\b", "--", ".", ":!scripts/recut.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    ).stdout
    return found + [f"still mentions a dissolved folder: {line}" for line in mentions.splitlines()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="print the moves and rewrites, change nothing")
    dry_run = parser.parse_args().dry_run
    move(dry_run)
    rewrite(dry_run)
    problems = [] if dry_run else leftovers()
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
