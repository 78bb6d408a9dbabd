"""Assemble: merge part models, join split chunks, crop and uncrop, postprocess."""
