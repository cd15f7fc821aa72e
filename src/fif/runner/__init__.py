"""A run of a stream: folder, setup, each task, run state, exact-resume checkpoints, data-parallel ranks,
and sweeps of many runs. With :mod:`fif.config` and :mod:`fif.cli` this is the edge of the package: the
only layers that read the config tree and turn it into components.

The package is named ``runner`` rather than ``run`` so that it never shadows :func:`fif.run`."""
