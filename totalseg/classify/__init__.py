"""What kind of scan an image is: contrast phase of a CT (``phase``) and modality CT/MR (``modality``).

Both use the official xgboost ensembles (``resources`` says where they come from).
"""
