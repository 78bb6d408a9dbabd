"""Predict: nnU-Net v2 result folders, their networks, and the sliding-window inference."""
