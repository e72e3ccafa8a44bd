"""Rewrite the README's generated config tables from the config fields (pruner/options.py).

    python scripts/readme_tables.py          # tests/test_options.py fails until this is run after a change
"""

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pruner.__main__ import RECOVER_FLAGS  # noqa: E402
from pruner.options import markdown_table  # noqa: E402
from pruner.prune import PruneConfig  # noqa: E402
from pruner.recover import LoraSettings  # noqa: E402



def tables() -> dict[str, str]:
    import app

    return {"PruneConfig": markdown_table(PruneConfig), "LoraSettings": markdown_table(LoraSettings, RECOVER_FLAGS),
            "endpoints": app.api_table(app.demo)}


def main() -> None:
    path = REPO / "README.md"
    text = path.read_text()
    for name, table in tables().items():
        start = text.index(f"<!-- {name} table: generated")
        start = text.index("\n", start) + 1
        end = text.index(f"<!-- end {name} table -->")
        text = text[:start] + table + "\n" + text[end:]
    path.write_text(text)


if __name__ == "__main__":
    main()
