"""Clinical reports from masks: spine (vertebral heights, density), aorta, pulmonary artery."""
