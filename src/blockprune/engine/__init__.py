"""The engine: prune while training (config, masks, masked linears, schedule, budget, Pruner, Taylor start,
training objective). It knows nothing of files, reports or the command line."""
