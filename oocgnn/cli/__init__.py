"""Command-line interface: ``oocgnn prepare | train | eval | inspect | report``."""
