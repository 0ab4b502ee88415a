from services.lineage.app import SPEC
from services.runtime.cli import main

raise SystemExit(main(SPEC))
