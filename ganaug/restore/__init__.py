"""Damage and repair: seeded corruptions (`corruptions.py`) and classical restorers (`classical.py`)."""
