"""The networks: the classifier, the class-conditional GAN and DiffAugment."""
