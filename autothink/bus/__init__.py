"""The trajectory bus: typed messages (:mod:`.messages`) on Redis streams (:mod:`.streams`)."""
