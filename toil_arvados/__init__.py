"""Run Toil workflows on Arvados: batch system, Keep job store, ``keep:`` URLs, local cluster."""

__version__ = "0.2.0"
