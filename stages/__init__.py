"""ganaug's DVC stages (one module per stage) and the building blocks they share."""
