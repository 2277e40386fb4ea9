"""What a run or a sweep reports: TensorBoard records (:mod:`kprune.report.tensorboard`),
tables and plots of sweeps (:mod:`kprune.report.summary`, ``tools/summarize``)."""
