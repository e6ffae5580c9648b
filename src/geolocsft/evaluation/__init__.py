"""The parts of an evaluation, one job each; :mod:`geolocsft.evaluate` puts them together.

``settings`` (the ``evaluate`` config block), ``intervals`` (Wilson, bootstrap and paired
intervals), ``metrics`` (Acc@R, medians, GeoScore), ``inputs`` (reading a prediction table and
joining it on the eval set's manifest), ``per_country``, ``report`` (one evaluation's tables),
``paired`` (predictors compared on the same images), ``references`` (published rows) and
``summary`` (every evaluation in one table).
"""
