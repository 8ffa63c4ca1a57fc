"""Stage `synthesize`: the generator of kind `synth.kind` -> `data/synthetic` + `plots/samples.png`.

The generator is `models/gan.pt` (kind `gan`, the default) or
`models/generators/<kind>.pt` (e.g. `repair` or `dagan`: variations of the shots,
stages `train_repair` and `train_dagan`), loaded only as that kind. The core is
`ganaug/tools/synthesis.py` (also behind `ganaug sample`).
`data/synthetic/` is an ImageFolder tree (`<class folder>/syn_<i>.png`) with
`manifest.parquet` (columns `MANIFEST_COLUMNS`) and `report.json` (per-class
quota, kept, drawn and shortfall; the memorisation check). Rows are class-major.

- Which weights: `synth.generator` = `ema` (default), `average` (mean of the
  last `gan.average_last` snapshots) or `raw`.
- How many: `synth.per_class`, or `synth.ratio` synthetic images per real shot.
- Truncation trick: `synth.truncation` t redraws noise entries with |z| > t.
- Filter (`ganaug/judge/synth_filter.py`): candidates are judged by the classifier
  fine-tuned on the real shots (`models/finetune/baseline.pt`): `synth.filter`
  none | confidence | top_fraction, drawing more until the quota is met or
  `synth.max_factor` x quota candidates were drawn (shortfalls in report.json).
  Pixel-exact copies of a real shot, and candidates closer than
  `synth.min_nn_distance` to one in that classifier's feature space, are dropped.

All noise comes from one `torch.Generator` seeded with `synth.seed`, drawn in
rounds of class-major candidates, so the result does not depend on
`synth.batch_size`; with `filter: none` and no copies dropped, row i of the
manifest is noise vector i. `generator_sha256` is the sha256 of the checkpoint's bytes; a kind's own
per-image columns (repair, dagan: `parent_shot`, `strength`) follow the manifest's columns.

`plots/samples.png` shows the first 10 images of every class as written (or,
when none are written, 10 preview samples per class that are not written anywhere).
"""
from __future__ import annotations

import json
from pathlib import Path

from ganaug.config.errors import exit_on_user_error
from ganaug.config.params import load_params
from ganaug.io.data import load_prepared
from ganaug.nets.generators import check_kind_param, checkpoint_path
from ganaug.tools.synthesis import REPORT, synthesize
from ganaug.train.runtime import pick_device


@exit_on_user_error
def main() -> None:
    p = load_params("params.yaml").synth
    kind = check_kind_param(p.kind)
    out_dir, png = Path("data/synthetic"), Path("plots/samples.png")
    real = load_prepared("data/restored/target_train.npz")
    df = synthesize(checkpoint_path(kind), p, out_dir, png, pick_device(), real, Path("models/finetune/baseline.pt"),
                    expect=kind)
    rep = json.loads((out_dir / REPORT).read_text())
    short = f", short by {rep['shortfall']} (cap synth.max_factor={p.max_factor})" if rep["shortfall"] else ""
    memo = rep["memorisation"] or {}
    print(f"synthesize: {len(df)} images (filter {p.filter}{short}; dropped {memo.get('exact_copies', 0)} exact and "
          f"{memo.get('near_copies_dropped', 0)} near copies) from the {kind} generator -> {out_dir}, grid -> {png}")


if __name__ == "__main__":
    main()
