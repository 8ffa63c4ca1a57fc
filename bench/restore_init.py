"""restore.init: source vs meta on digits occlusion:0.3 (issue #16): PSNR/SSIM on the target test images before and after
adapting to 10 shots per class, default restore params, 1 thread. Printed, not written: results in docs/benchmarks.md.

    .venv/bin/python -m bench.restore_init
"""
import numpy as np, torch, time
torch.set_num_threads(1)
from ganaug.config.params import parse_params
from ganaug.io.data import LoadOptions, load_digits_set
from ganaug.restore.corruptions import corrupt
from ganaug.train.restorer import RestoreTrainConfig, meta_restorer, train_restorer, restore_images
from ganaug.judge.image_quality import quality
p = parse_params({}).restore
d = load_digits_set(LoadOptions(16, 1))
src = d.y < 5
cpu = torch.device("cpu")
for seed in (0, 1):
    cfg = RestoreTrainConfig(p.steps, p.width, p.batch_size, p.lr, p.adv_weight, p.clean_fraction, seed)
    rng = np.random.default_rng(seed)
    tgt = np.flatnonzero(~src); shots = np.concatenate([rng.choice(np.flatnonzero(d.y == c), 10, replace=False) for c in range(5, 10)])
    test = np.setdiff1d(tgt, shots)
    dmg, k = corrupt(d.x[test], "occlusion:0.3", seed)
    for init in ("source", "meta"):
        t0 = time.time()
        if init == "meta":
            g, _ = meta_restorer(d.x[src], d.y[src], "occlusion:0.3", cfg, p.meta_episodes, p.meta_inner_steps, p.meta_outer_lr, p.meta_task_images, cpu)
        else:
            g, _ = train_restorer(d.x[src], "occlusion:0.3", cfg, cpu)
        before = quality(d.x[test], restore_images(g, dmg, k, cpu))
        g, _ = train_restorer(d.x[shots], "occlusion:0.3", RestoreTrainConfig(**{**cfg.__dict__, "steps": p.adapt_steps}), cpu, g=g)
        after = quality(d.x[test], restore_images(g, dmg, k, cpu))
        print(f"seed {seed} {init}: before adapt {before}, after adapt {after}, {time.time()-t0:.0f} s", flush=True)
