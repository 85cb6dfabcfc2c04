"""recflow's pipelines: the training DAG, how it is compiled, run locally, submitted and scheduled."""
