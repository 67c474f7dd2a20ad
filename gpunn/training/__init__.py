"""The pieces of the training job (:mod:`gpunn.train` is its front door).

* :mod:`~gpunn.training.specs`: the table of models (build, input layout, targets, loss,
  metric, update rule, what data each can learn, defaults), read by the trainer, the
  settings and ``gpunn graph``;
* :mod:`~gpunn.training.settings`: defaults per model and data set, checks, backend choice;
* :mod:`~gpunn.training.loop`: :class:`Trainer`, the loop and its events;
* :mod:`~gpunn.training.extensions`: checkpoint and resume, metrics log, progress report,
  curve plot.
"""
