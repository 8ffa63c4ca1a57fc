"""Prefect orchestration of ganaug's DVC stages (no training code here: DVC runs the stages).

- `pipeline.flow.augment`: the flow (one task per dvc.yaml stage, in DAG order)
- `pipeline.run_params.AugmentParams`: its parameters (overrides validated by the params schema)
- `pipeline.deploy`: the nightly and the manual deployment
- `pipeline.cli`: `ganaug run` and `ganaug serve`
"""
