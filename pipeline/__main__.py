"""`python -m pipeline run|serve ...`: the `ganaug` command without installing the package."""
import sys

from pipeline.cli import main

sys.exit(main())
