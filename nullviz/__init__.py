"""nullviz: the nullspace of Vision Transformers, as a library (the app and the command line sit on top).

Modules, one idea each: ``models`` (loading, preprocessing), ``data`` (images and data sets), ``nullspace``
(exact patch-embedding nullspace), ``synthesis`` (approximate-nullspace noise), ``attention`` and
``attribution`` (inspection), ``robustness`` (evaluation), ``figures`` (plotly builders), ``cli``.
"""

__version__ = "0.1.0"
