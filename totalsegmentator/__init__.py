"""totalseg's compatibility layer: the official ``totalsegmentator`` import paths, served by totalseg.

Scripts written for the official TotalSegmentator package (``totalsegmentator.python_api``,
``.nifti_ext_header``, ``.map_to_binary``, ``.libs``, ``.statistics``, ``.config``, ``.registry``) run
unchanged; every name here forwards to the ``totalseg`` package. This package *replaces* the official one
(same module name, same command names), so the official package must not be installed beside it.
"""
