"""The ``blockprune prune`` application: the staged, resumable run (teacher, prune, shrink, fill, evaluate,
bench), its training loop, its progress lines and the hub upload."""
