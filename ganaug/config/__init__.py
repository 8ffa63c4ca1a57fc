"""The params.yaml schema and the errors a stage reports as one line."""
