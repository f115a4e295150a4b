"""The entry points: the ``autothink`` command (``cli``) and the supervisor behind ``autothink up``
and ``autothink demo`` (``launcher``).

This is the top layer. It may import everything below it (``services``, ``autothink``); nothing
below imports it.
"""
