"""ganaug's DVC stages: one module per stage of dvc.yaml (the building blocks are in the ganaug package)."""
