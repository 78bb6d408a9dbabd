"""``totalseg_report``: a static HTML report of a case (NiiVue viewer + statistics) or of a cohort (gallery).

Modules: ``case`` (load image + segmentation), ``export`` (volumes for the viewer), ``tiles`` (gallery
pictures), ``flags`` (QC flags), ``cohort`` (read a totalseg_batch folder), ``casepage``/``pages`` (HTML),
``build`` (write the report folder). The page scripts, styles and the NiiVue bundle are in ``assets/``.
"""
