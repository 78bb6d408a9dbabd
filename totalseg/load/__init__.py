"""Reading the input image (NIfTI files and nibabel image objects) with strict validation."""
