"""Bundled analysis measurements: extra per-cell measurements of the adapted models during meta-test."""
