"""Placing answered files in the dated archive or the error folder, with sidecars; recovery and retention."""
