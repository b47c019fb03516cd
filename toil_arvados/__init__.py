"""Run Toil workflows on Arvados: batch system, Keep job store, ``keep:`` URLs, local cluster."""

__version__ = "0.1.0"
