"""Trainer classes nnU-Net finds by name through ``nnUNet_extTrainer`` (set by totalseg.train).

nnU-Net imports the modules of this folder as top-level modules, so they import nothing from totalseg.
"""
