"""Files on disk: save and load a shrunk model, compact storage of sparse weights, sizes on disk."""
