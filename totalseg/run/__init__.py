"""One run, from options to written outputs: the option table (``options``), the run's setup (``setup``), the
plan of models (``plan``), carrying it out (``pipeline``) on a ``Predictor`` (``predictor``, with the engine and
thread choices of ``engine``), and the official API over them (``api``)."""
