"""Benchmarks: uplift (does GAN augmentation help?) and throughput (how fast?). See docs/benchmarks.md."""
