"""Prepare: orient, crop, resample and normalise an image for the networks."""
