"""The entry points: the ``autothink`` command (``cli``) and the supervisor behind ``autothink up``
and ``autothink demo`` (``launcher``).

This is the top layer. It may import everything below it (``services``, ``autothink``); nothing
below imports it.
"""

from autothink.procs import die_with_parent_if_spawned as _die_with_parent

_die_with_parent()  # a vLLM engine process spawned by a service must not outlive it (autothink/procs.py)
