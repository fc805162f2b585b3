"""Surgery: the model-type table and the exact removal of what pruning emptied (heads, FFN neurons).
Nothing here trains."""
