"""ganaug's building blocks (config, io, nets, train, judge) and tools; the DVC stages that use them are in stages/."""
