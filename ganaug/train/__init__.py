"""Training loops: classifier fitting and fine-tuning, the GAN trainer, augmentation, device and threads."""
